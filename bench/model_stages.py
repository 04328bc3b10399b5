"""Benchmark: pipeline stages of this checkout against a baseline commit, taking turns.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/model_stages.py [--baseline 00a2643]
        [--rounds 3] [--stages train,evaluate,publish] [--baseline-env NAME=VALUE]
        [--section NAME]

On the workspace bench/daily.py leaves (its measured day, factors 64: 20M events, the gate
passed), after one untimed run of each stage with each side, each round runs
`python -m stages.<stage>` for each of --stages (default train, evaluate, publish; validate and
filter_noise may be given too), with the baseline's dailyrec/ and stages/ (`git archive`) and with
this checkout's, the order swapped every round, on the same data, MLflow store and Redis. Between
runs the MLflow alias goes back to the version bench/daily.py published first, so every evaluate
scores the same published baseline (the artefact, as in the daily case). It checks that both give
the same outputs (models/ and data/clean byte for byte, the same metrics but timings, every
record of the version publish serves byte for byte), and reports the best wall time and system
CPU time of each stage process, with the stage's own timing of each of its steps (train.json,
publish.json, evaluate's MLflow metrics) and, for train and evaluate, the process less its fit:
the fit's code is the same on both sides but its time varies by seconds run to run. A baseline
commit has a state folder of its own ($DAILYREC_STATE_DIR, a copy of the workspace's), so that
filter_noise's day verdicts and day files, keyed by the code, stay each side's own rather than
each side evicting the other's. Section "model_stages" for the default stages, "window_stages"
for others, or --section.

--baseline-env NAME=VALUE makes the baseline this checkout with that environment variable set
instead of a commit (the same code, the same state folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
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


def run_stage(tree: tuple[Path, dict], stage: str, ws: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, system CPU seconds) of one stage process."""
    started, before = time.perf_counter(), os.times()
    code, extra = tree
    proc = subprocess.run([sys.executable, "-c", RUN, str(code), f"stages.{stage}"], cwd=ws,
                          env={**env, **extra}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{stage} with {tree} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - started, os.times().children_system - before.children_system


def inner_steps(ws: Path, stage: str, client) -> dict[str, float]:
    """The stage's own timing of its steps, as it records them: train's and publish's in their
    metrics file, evaluate's in the MLflow run (its duration_s_eval_* metrics)."""
    if stage == "train":
        durations = json.loads((ws / "metrics/train.json").read_text())["durations_s"]
        return {k: float(v) for k, v in durations.items() if k != "total"}
    if stage == "publish":
        seconds = json.loads((ws / "metrics/publish.json").read_text())["seconds"]
        return {k: float(v) for k, v in seconds.items() if k != "total"}
    if stage == "evaluate":
        run_id = json.loads((ws / "metrics/mlflow.json").read_text())["run_id"]
        metrics = client.get_run(run_id).data.metrics
        return {k.removeprefix("duration_s_eval_"): float(v) for k, v in metrics.items()
                if k.startswith("duration_s_eval_") and k != "duration_s_eval_total"}
    return {}


def copy_state(source: str, target: str) -> None:
    """A state file for the baseline's folder: day files linked (read-only, replaced, never
    edited: 400 MB), the rest copied (the MD5 memo is a SQLite database)."""
    if source.endswith(".parquet"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def untimed(value):
    """A metrics document without its timings (seconds, rates)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items()
                if k not in ("seconds", "events_per_second", "durations_s", "run_id")}
    return value


def served_records(redis_url: str) -> dict:
    """MD5 of every record of the version being served (the meta aside: it holds its name and
    the time): the items, fallback, factors, lists, histories and similar items."""
    import redis

    from dailyrec.publish import keys as K

    client, layout = redis.Redis.from_url(redis_url), K.Layout.from_env({})
    version = client.get(layout.current).decode()
    prefix = layout.meta(version).removesuffix("meta")
    got = {}
    for key in sorted(k.decode() for k in client.scan_iter(match=layout.version_pattern(version),
                                                           count=1000)):
        if key == layout.meta(version):
            continue
        kind = client.type(key).decode()
        body = client.get(key) if kind == "string" else b"".join(
            f + b"=" + v for f, v in sorted(client.hgetall(key).items()))
        got[key.removeprefix(prefix)] = hashlib.md5(body).hexdigest()
    return got


def outputs(ws: Path, stages: list[str], redis_url: str) -> dict:
    """What must not depend on the code's speed."""
    def md5s(folder: str) -> dict:
        return {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted((ws / folder).iterdir()) if p.is_file()}

    def read(name: str) -> dict:
        return untimed(json.loads((ws / "metrics" / name).read_text()))

    got = {}
    if "validate" in stages:
        got["validation"] = read("validation.json")
    if "filter_noise" in stages:
        got.update(clean=md5s("data/clean"), filter=read("filter.json"))
    if "train" in stages:
        got["models"] = md5s("models")
    if "evaluate" in stages:
        got.update(eval=read("eval.json"), gate=read("gate.json"))
    if "publish" in stages:  # each run publishes a version of its own: its name aside
        summary = {k: v for k, v in read("publish.json").items()
                   if k not in ("version", "previous_version", "kept_versions",
                                "removed_versions", "users_per_second")}
        got.update(publish=summary, served=served_records(redis_url))
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-daily"))
    ap.add_argument("--baseline", default="00a2643", help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in run order")
    ap.add_argument("--baseline-env", default=None, metavar="NAME=VALUE",
                    help="the baseline is this checkout with this variable set")
    ap.add_argument("--section", default=None,
                    help="docs/benchmarks.md's section (default: model_stages for the default "
                         "stages, else window_stages)")
    args = ap.parse_args(argv)
    stages = args.stages.split(",")
    ws = args.data / "ws"
    if not (ws / "metrics/gate.json").exists():
        raise SystemExit(f"{ws}: no workspace; run bench/daily.py first")
    if args.baseline_env:
        name, _, value = args.baseline_env.partition("=")
        trees = {f"this checkout, {name}={value}": (ROOT, {name: value}),
                 "this checkout": (ROOT, {})}
    else:  # the baseline's own state folder: its caches keyed by its code stay its own
        state = args.data / f"state-{args.baseline}"
        shutil.rmtree(state, ignore_errors=True)
        shutil.copytree(ws / ".state", state, copy_function=copy_state)
        trees = {f"baseline {args.baseline}": (baseline_tree(args.baseline, args.data),
                                               {"DAILYREC_STATE_DIR": str(state)}),
                 "this checkout": (ROOT, {})}
    port = free_port()
    redis = start_redis(port, args.data)
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DAILYREC_STATE_DIR": str(ws / ".state"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("DAILYREC_MLFLOW", None)
    env.pop("NUMPY_MADVISE_HUGEPAGE", None)
    from mlflow import MlflowClient

    from dailyrec.core import settings
    from dailyrec.ops import settings as ops

    registry = ops.mlflow(settings.load(ws / "params.yaml"))
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    was = client.get_model_version_by_alias(registry.model_name, registry.alias).version
    served = "1"  # the first day's model: the day before's, scored as the artefact

    def serve(version: str) -> None:
        client.set_registered_model_alias(registry.model_name, registry.alias, version)

    serve(served)
    times: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {s: [] for s in stages} for name in trees}
    steps: dict[str, dict[tuple[str, str], list[float]]] = {name: {} for name in trees}
    seen: dict[str, dict] = {}
    load = [os.getloadavg()[0]]
    try:
        for name in trees:  # untimed: each side's caches keyed by its code filled
            for stage in stages:
                run_stage(trees[name], stage, ws, env)
                if stage == "publish":  # the only stage that moves the alias
                    serve(served)
        for r in range(args.rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                for stage in stages:
                    times[name][stage].append(run_stage(trees[name], stage, ws, env))
                    own = inner_steps(ws, stage, client)
                    for step, seconds in own.items():
                        steps[name].setdefault((stage, step), []).append(seconds)
                    if "fit" in own:  # the same fit on both sides, but +-2 s run to run
                        steps[name].setdefault((stage, "the process less its fit"), []).append(
                            times[name][stage][-1][0] - own["fit"])
                    if stage == "publish":
                        serve(served)
                got = outputs(ws, stages, env["REDIS_URL"])
                if seen and got != next(iter(seen.values())):
                    raise SystemExit(f"{name} gave other outputs than {next(iter(seen))}")
                seen[name] = got
                print(f"round {r + 1}, {name}: " + ", ".join(
                    f"{s} {times[name][s][-1][0]:.1f} s" for s in stages), flush=True)
            load.append(os.getloadavg()[0])
    finally:
        serve(was)
        redis.terminate()
        redis.wait(10)
    base, ours = trees

    def best(name: str, stage: str) -> tuple[float, float]:
        return min(times[name][stage])  # the fastest run, with its system time

    def mean(name: str, stage: str) -> float:
        return sum(t for t, _ in times[name][stage]) / len(times[name][stage])

    rows = [[f"{s} (stage process)", round(best(base, s)[0], 2), round(best(ours, s)[0], 2),
             f"{best(base, s)[0] / best(ours, s)[0]:.2f}x", round(best(base, s)[1], 2),
             round(best(ours, s)[1], 2), round(mean(base, s), 2), round(mean(ours, s), 2)]
            for s in stages]
    total = [sum(best(n, s)[0] for s in stages) for n in (base, ours)]
    rows.append([f"**the {len(stages)}**", round(total[0], 1), round(total[1], 1),
                 f"{total[0] / total[1]:.2f}x", "", "",
                 round(sum(mean(base, s) for s in stages), 1),
                 round(sum(mean(ours, s) for s in stages), 1)])
    # The stages' own steps: a change inside a stage shows through the fit's noise.
    for stage in stages:
        for key in sorted(k for k in steps[base] if k[0] == stage and k in steps[ours]):
            b, o = min(steps[base][key]), min(steps[ours][key])
            label = key[1] if key[1].startswith("the process") else f"{key[1]} (its own timing)"
            rows.append([f"{stage}: {label}", round(b, 2), round(o, 2),
                         f"{b / o:.2f}x" if o > 0 else "", "", "",
                         round(sum(steps[base][key]) / len(steps[base][key]), 2),
                         round(sum(steps[ours][key]) / len(steps[ours][key]), 2)])
    where = ("bench/daily.py's workspace (20M events, factors 64, the gate passed; evaluate scores "
             "the published model, bench/daily.py's first day, as the artefact)"
             if "evaluate" in stages else
             "bench/daily.py's workspace (20M events, factors 64: 49,387 users x 20,000 items "
             "published, the explanations' histories and similar items on)"
             if stages == ["publish"] else
             "bench/daily.py's workspace (20M events in a 60-day window, its measured day: the "
             "day verdicts and day files of the run before reused)")
    body = (f"{where}. {args.rounds} rounds, the order swapped each round; best of "
            f"{args.rounds} per stage (wall seconds, and the system CPU seconds of that run), and "
            f"the mean wall time. Load average (1 min) at the start and after each round: "
            f"{', '.join(f'{x:.1f}' for x in load)}.\n\n"
            + markdown_table(["step", f"{base}: s", f"{ours}: s", "speed-up",
                              f"{base}: sys s", f"{ours}: sys s", f"{base}: mean s",
                              f"{ours}: mean s"], rows)
            + "\n\nThe same outputs from both (" + ", ".join(
                {"validate": "metrics/validation.json",
                 "filter_noise": "data/clean byte for byte, metrics/filter.json",
                 "train": "models/ byte for byte", "evaluate": "metrics/eval.json and gate.json",
                 "publish": "every record of the version served byte for byte, metrics/"
                            "publish.json but the version's name"}[s] for s in stages)
            + ", timings aside): yes, checked after every run."
            + (" Rows marked \"its own timing\": the stage's own measurement of that step "
               "(metrics/train.json, metrics/publish.json, evaluate's MLflow metrics), best and "
               "mean of the timed runs." if any(steps[base]) else "")
            + (" \"The process less its fit\": each run's wall time less its own fit time (the "
               "fit's code is the same on both sides, its time is not)."
               if any(k[1] == "the process less its fit" for k in steps[base]) else ""))
    section = args.section or ("model_stages" if stages == list(STAGES) else "window_stages")
    title = ("train, evaluate and publish" if section == "model_stages"
             else " and ".join(stages)) + f" against {base.removeprefix('baseline ')}"
    publish(section, title, body, command=shlex.join(["python", "bench/model_stages.py",
                                                       *(argv if argv is not None
                                                         else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
