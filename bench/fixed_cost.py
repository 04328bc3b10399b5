"""Benchmark: the daily run's fixed cost (the scheduler's command on a day with nothing new),
this checkout against a baseline commit, taking turns.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/fixed_cost.py [--baseline f4bd65d]
        [--rounds 4]

On the workspace bench/daily.py leaves (20M events, its measured day), `python -m stages.daily
--date D` for that same day again: fetch_delta runs (DVC always runs it) and finds the same
delta, every other stage is unchanged, so what is timed is what every day pays besides the
stages' own work: the runner, DVC's commands (remote default, status, pull, a `dvc repro
--single-item` per stage, push), the served check and the report.

The baseline runs the runner of --baseline (its dailyrec/ and stages/ from git, first on the
runner's sys.path) with ruamel.yaml's C parser hidden from DVC (a module on PYTHONPATH that
refuses the import), as it was before ruamel.yaml.clib was pinned; "this checkout" runs this
checkout's runner with the environment as installed. The stages DVC runs are the workspace's own
copies, the same for both. After one untimed run of each (the first also brings the workspace
back in line with dvc.lock), the rounds alternate which goes first. Section "fixed_cost" of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.daily import RUN_DATE, free_port, run_day, start_redis, workspace_env  # noqa: E402
from bench.model_stages import RUN, baseline_tree  # noqa: E402
from bench.report import markdown_table, publish  # noqa: E402

NO_CLIB = "raise ImportError('hidden by bench/fixed_cost.py: the baseline runs without it')\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-daily"))
    ap.add_argument("--baseline", default="f4bd65d", help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    ws = args.data / "ws"
    if not (ws / "metrics/gate.json").exists():
        raise SystemExit(f"{ws}: no workspace; run bench/daily.py first")
    hidden = args.data / "no-ruamel-clib"
    hidden.mkdir(exist_ok=True)
    (hidden / "_ruamel_yaml.py").write_text(NO_CLIB)
    base, ours = f"baseline {args.baseline}", "this checkout"
    trees = {base: (baseline_tree(args.baseline, args.data), {"PYTHONPATH": str(hidden)}),
             ours: (ROOT, {})}
    port = free_port()
    redis = start_redis(port, args.data)
    env = workspace_env(ws, f"redis://127.0.0.1:{port}/0")
    env.pop("PYTHONPATH", None)
    env.pop("DAILYREC_MLFLOW", None)

    def day_with(name: str) -> tuple[dict, float, str]:  # the runner of that side's tree
        tree, extra = trees[name]
        return run_day(ws, {**env, **extra}, RUN_DATE,
                       [sys.executable, "-c", RUN, str(tree), "stages.daily"])

    times: dict[str, list[tuple[float, dict]]] = {name: [] for name in trees}
    load = [os.getloadavg()[0]]
    try:
        # the served model in this Redis, then one untimed run of each
        subprocess.run([sys.executable, "-m", "stages.publish"], cwd=ws, env=env, check=True,
                       capture_output=True)
        for name in trees:
            day_with(name)
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                steps, wall, _ = day_with(name)
                ran = [s for s, (_, _, how) in steps.items() if how == "ran"]
                if ran != ["fetch_delta"]:
                    raise SystemExit(f"{name}: expected only fetch_delta to run, got {ran}")
                times[name].append((wall, steps))
                print(f"round {r + 1}, {name}: {wall:.1f} s", flush=True)
            load.append(os.getloadavg()[0])
    finally:
        redis.terminate()
        redis.wait(10)

    def best(name: str) -> tuple[float, dict]:
        return min(times[name], key=lambda t: t[0])

    steps = [s for s in best(ours)[1] if s != "done"]  # "done": the runner's total, the wall's
    rows = []
    for step in steps:  # the steps that say how long they took (run_day: 0 when they do not)
        got = [best(n)[1].get(step, (0.0,))[0] for n in (base, ours)]
        if all(got):
            rows.append([step, round(got[0], 2), round(got[1], 2)])
    walls = {n: [t for t, _ in times[n]] for n in trees}
    rows.append(["**whole run (wall), best**", round(min(walls[base]), 2),
                 round(min(walls[ours]), 2)])
    rows.append(["whole run (wall), mean", round(sum(walls[base]) / len(walls[base]), 2),
                 round(sum(walls[ours]) / len(walls[ours]), 2)])
    rows.append(["**speed-up (best)**", "", f"{min(walls[base]) / min(walls[ours]):.2f}x"])
    body = (f"bench/daily.py's workspace (20M events in a 60-day window), its measured day run "
            f"again: fetch_delta finds the same delta and every other stage is unchanged, so "
            f"this is what a day costs besides the stages' own work. {args.rounds} rounds, the "
            f"order swapped each round; the steps of each side's fastest run (the runner's own "
            f"progress lines: DVC's command and the stage process together). The baseline runs "
            f"without ruamel.yaml's C parser (hidden from DVC), as installed before it was pinned. "
            f"Load average (1 min) at the start and after each round: "
            f"{', '.join(f'{x:.1f}' for x in load)}.\n\n"
            + markdown_table(["step", f"{base}: s", f"{ours}: s"], rows))
    publish("fixed_cost", f"The daily run's fixed cost against {args.baseline}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
