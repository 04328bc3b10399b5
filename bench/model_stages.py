"""Benchmark: train, evaluate and publish of this checkout against a baseline commit, taking turns.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/model_stages.py [--baseline 00a2643]
                                                                          [--rounds 3]

On the workspace bench/daily.py leaves (its measured day, factors 64: 20M events, the gate
passed), each round runs `python -m stages.train`, `stages.evaluate` and `stages.publish` with the
baseline's dailyrec/ and stages/ (`git archive`) and with this checkout's, the order swapped every
round, on the same data, MLflow store and Redis. Between runs the MLflow alias goes back to the
version bench/daily.py published, so every evaluate scores the same published baseline (the
artefact, as in the daily case). It checks that both give the same models/ (byte for byte) and the
same metrics/eval.json and gate verdict, and reports the best wall time of each stage process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.daily import free_port, start_redis  # noqa: E402
from bench.report import markdown_table, publish  # noqa: E402

STAGES = ("train", "evaluate", "publish")
RUN = "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); " \
      "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"


def baseline_tree(rev: str, dest: Path) -> Path:
    """The baseline's dailyrec/ and stages/, from git."""
    tree = dest / f"baseline-{rev}"
    if not tree.exists():
        archive = subprocess.run(["git", "archive", rev, "dailyrec", "stages"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        tarfile.open(fileobj=BytesIO(archive)).extractall(tree)
    return tree


def run_stage(tree: Path, stage: str, ws: Path, env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, str(tree), f"stages.{stage}"], cwd=ws,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{stage} with {tree} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def outputs(ws: Path) -> dict:
    """What must not depend on the code's speed: models/ bytes, the evaluation, the gate."""
    report = json.loads((ws / "metrics/eval.json").read_text())
    report["baselines"]["published"].pop("run_id", None)
    gate = json.loads((ws / "metrics/gate.json").read_text())
    return {"models": {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                       for p in sorted((ws / "models").iterdir())},
            "eval": report, "gate": [gate["passed"], gate["reason"]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-daily"))
    ap.add_argument("--baseline", default="00a2643", help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ws = args.data / "ws"
    if not (ws / "metrics/gate.json").exists():
        raise SystemExit(f"{ws}: no workspace; run bench/daily.py first")
    trees = {f"baseline {args.baseline}": baseline_tree(args.baseline, args.data),
             "this checkout": ROOT}
    port = free_port()
    redis = start_redis(port, args.data)
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DAILYREC_STATE_DIR": str(ws / ".state"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("DAILYREC_MLFLOW", None)
    from mlflow import MlflowClient

    from dailyrec import settings
    from dailyrec.settings import ops

    registry = ops.mlflow(settings.load(ws / "params.yaml"))
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    was = client.get_model_version_by_alias(registry.model_name, registry.alias).version
    served = "1"  # the first day's model: the day before's, scored as the artefact

    def serve(version: str) -> None:
        client.set_registered_model_alias(registry.model_name, registry.alias, version)

    serve(served)
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in trees}
    seen: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    try:
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                for stage in STAGES:
                    times[name][stage].append(run_stage(trees[name], stage, ws, env))
                    serve(served)
                got = outputs(ws)
                if seen and got != next(iter(seen.values())):
                    raise SystemExit(f"{name} gave other outputs than {next(iter(seen))}")
                seen[name] = got
                print(f"round {r + 1}, {name}: " + ", ".join(
                    f"{s} {times[name][s][-1]:.1f} s" for s in STAGES), flush=True)
            load.append(os.getloadavg()[0])
    finally:
        serve(was)
        redis.terminate()
        redis.wait(10)
    base, ours = trees
    rows = [[f"{s} (stage process)", min(times[base][s]), min(times[ours][s]),
             f"{min(times[base][s]) / min(times[ours][s]):.2f}x"] for s in STAGES]
    total = [sum(min(times[n][s]) for s in STAGES) for n in (base, ours)]
    rows.append(["**the three**", round(total[0], 1), round(total[1], 1),
                 f"{total[0] / total[1]:.2f}x"])
    body = (f"bench/daily.py's workspace (20M events, factors 64, the gate passed; evaluate "
            f"scores the published model, bench/daily.py's first day, as the artefact). "
            f"{args.rounds} rounds, the order swapped each round; best of {args.rounds} per "
            f"stage, in seconds. Load average (1 min) at the start and after each round: "
            f"{', '.join(f'{x:.1f}' for x in load)}.\n\n"
            + markdown_table(["step", f"{base}: s", f"{ours}: s", "speed-up"], rows)
            + "\n\nSame models/ byte for byte, same metrics/eval.json and gate verdict from both: "
            "yes (checked after every run).")
    publish("model_stages", "train, evaluate and publish against a baseline commit", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
