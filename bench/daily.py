"""Benchmark: the whole daily run on a 60-day window, against a bare implicit fit of its matrix.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/daily.py [--events 20000000]
                                                                   [--factors 8,64]

What it does, in one run:
1. builds a 60-day history of simulator events (bench/filter.py's generator: humans with tastes,
   crawlers, scrapers, admins, a rotating-id scraper...), the last two days not as history but as
   rows of a SQLite source database (the simulator's three messy tables), in a throwaway copy of
   the project (git + DVC, a local DVC remote, MLflow on SQLite, its own Redis);
2. runs the scheduler's command for the first source day (`python -m stages.daily --date D1`:
   a fresh workspace, everything runs; reported, not compared) and keeps a copy of the workspace;
3. for each `--factors` value, from that copy: sets train.factors and runs the scheduler's command
   for the second day, the measured one (pull, fetch, merge, validate, filter, train, evaluate,
   publish, push, report), reading each stage's time and peak memory from the runner's own lines;
4. fits implicit ALS on the same data/clean with the same settings in a fresh process: the bare
   fit, the floor for the ratio.
The table goes to docs/benchmarks.md (section "daily"). Say the load average beside it: this
machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import filter as FB  # noqa: E402
from bench.report import markdown_table, publish  # noqa: E402
from dailyrec.quality.filtering import clean  # noqa: E402
from dailyrec.core.files import file_md5_uncached  # noqa: E402
from dailyrec.ops.runner.retention import tree_bytes  # noqa: E402
from dailyrec.ingest.history import partition_day, partition_path  # noqa: E402
from tools import simulate as SIM  # noqa: E402

VENV_BIN = Path(sys.executable).parent
RUN_DATE = FB.RUN_DATE  # the measured day's run.date; its delta is RUN_DATE - 1
SOURCE_DAYS = (RUN_DATE - dt.timedelta(days=2), RUN_DATE - dt.timedelta(days=1))
LINE = re.compile(r"^\[(?P<day>[\d-]+)\] (?P<step>\S+(?: \S+)?)\s{2,}(?P<what>.*)$")
SKIP_TOP = {"data", "models", "metrics", "reports", "node_modules", "mlruns", "logs",
            "dvc-remote", ".venv", ".git", ".tools"}
SKIP_FILES = {"source.db", "mlflow.db", ".dvc/config.local", "dvc.lock"}


def project_copy(dest: Path) -> None:
    """The project's tracked (and new, not ignored) files, never outputs or run records."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for rel in sorted(set(filter(None, out.split("\0")))):
        if rel.split("/", 1)[0] in SKIP_TOP or rel in SKIP_FILES or not (ROOT / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return proc
        time.sleep(0.1)
    raise SystemExit("redis-server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_params(ws: Path, **values) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    path = ws / "params.yaml"
    data = yaml.load(path.read_text())
    for dotted, value in values.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    with path.open("w") as fh:
        yaml.dump(data, fh)


def workspace_env(ws: Path, redis_url: str) -> dict:
    """The environment the workspace's runs get: its own MLflow, state, source and Redis, no mail."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "REDIS_URL": redis_url, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
           "DAILYREC_STATE_DIR": str(ws / ".state"),
           "DAILYREC_SOURCE_URL": f"sqlite:///{ws / 'source.db'}",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@dailyrec.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@dailyrec.invalid"}
    for name in [n for n in env if n.startswith("DAILYREC_SMTP")]:
        env.pop(name)
    return env


def build_workspace(data: Path, events: int, redis_url: str) -> tuple[Path, dict, int]:
    """The copy, its history (58 days), its source (2 days) and its environment."""
    history, _truth = FB.build(data / "window", events)
    ws = data / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    project_copy(ws)
    env = workspace_env(ws, redis_url)
    set_params(ws, **{"filter.window_days": FB.WINDOW_DAYS})
    # Committed before any data: the history is DVC's (an output of merge_history), never git's.
    for args in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "bench workspace"]):
        subprocess.run(args, cwd=ws, env=env, check=True, capture_output=True)
    seeded = 0
    for path in sorted(history.glob("day=*/*.parquet")):
        day = partition_day(path)
        if day in SOURCE_DAYS:
            continue
        target = partition_path(ws / "data/history", day)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target) if path.stat().st_dev == target.parent.stat().st_dev \
            else shutil.copy2(path, target)
        seeded += 1
    per_day = events // FB.WINDOW_DAYS
    noise = FB.canonical_day(SIM.Population(FB.SEED, FB.USERS, FB.ITEMS),
                             SIM.build_truth(FB.SEED, FB.USERS), RUN_DATE, 100_000).num_rows \
        - 100_000
    humans = max(10_000, per_day - noise)
    SIM.write(env["DAILYREC_SOURCE_URL"], SOURCE_DAYS[0], len(SOURCE_DAYS), seed=FB.SEED,
              users=FB.USERS, items=FB.ITEMS, events_per_day=humans)
    return ws, env, seeded


def remote_objects(ws: Path) -> dict[str, int]:
    """The workspace's local DVC remote: object path -> bytes."""
    remote = ws / "dvc-remote"
    return {p.relative_to(remote).as_posix(): p.stat().st_size
            for p in remote.rglob("*") if p.is_file()} if remote.exists() else {}


def pushed(ws: Path, before: dict[str, int]) -> dict:
    """What the run's `dvc push` added to the remote, and how much of it is data/clean's."""
    added = {k: v for k, v in remote_objects(ws).items() if k not in before}
    days = clean.day_files(ws / "data/clean")
    objects = {f"files/md5/{md5[:2]}/{md5[2:]}": p.stat().st_size
               for p in days for md5 in [file_md5_uncached(p)]}
    new = [k for k in objects if k in added]
    return {"bytes": sum(added.values()), "clean_files": len(days), "clean_new": len(new),
            "clean_new_bytes": sum(objects[k] for k in new),
            "clean_bytes": sum(objects.values())}


def run_day(ws: Path, env: dict, day: dt.date, command: list[str] | None = None
            ) -> tuple[dict, float, str]:
    """The scheduler's command (or another that runs the runner: command, without --date);
    {step: (seconds, peak MB or None, how)}, wall seconds, output."""
    started = time.perf_counter()
    proc = subprocess.run([*(command or [sys.executable, "-m", "stages.daily"]),
                           "--date", day.isoformat()],
                          cwd=ws, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"daily run {day} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    steps = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        seconds = re.search(r" in ([\d.]+) s", m["what"])
        peak = re.search(r"peak ([\d,]+) MB", m["what"])
        steps[m["step"]] = (float(seconds[1]) if seconds else 0.0,
                            float(peak[1].replace(",", "")) if peak else None,
                            m["what"].split(" ")[0])
    return steps, wall, proc.stdout


BARE_FIT = """
import json, time
from threadpoolctl import threadpool_limits
from implicit.cpu.als import AlternatingLeastSquares
from dailyrec.core import settings
from dailyrec.model import confidence as C, training
from dailyrec.model import settings as model
params = settings.load()
config = model.train(params)
events = training.read_events("data/clean")
matrix = C.confidence(C.aggregate(events, config.confidence, settings.window_end(params)),
                      config.confidence)
with threadpool_limits(1, "blas"):  # as implicit asks; train does the same
    als = AlternatingLeastSquares(factors=config.factors, regularization=config.regularization,
                                  alpha=1.0, iterations=config.iterations,
                                  random_state=config.random_state)
    started = time.perf_counter()
    als.fit(matrix, show_progress=False)
    seconds = time.perf_counter() - started
print(json.dumps({"fit_s": seconds, "nnz": int(matrix.nnz), "shape": list(matrix.shape)}))
"""


def bare_fit(ws: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", BARE_FIT], cwd=ws, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"bare fit failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000_000, help="events in the 60-day window")
    ap.add_argument("--factors", default="8,64", help="train.factors values, comma-separated")
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-daily"))
    args = ap.parse_args(argv)
    factors = [int(f) for f in args.factors.split(",")]
    args.data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis = start_redis(port, args.data)
    load = [os.getloadavg()[0]]
    try:
        ws, env, seeded = build_workspace(args.data, args.events, f"redis://127.0.0.1:{port}/0")
        print(f"workspace {ws}: {seeded} history days seeded; first day {SOURCE_DAYS[0]}",
              flush=True)
        first, first_wall, _ = run_day(ws, env, RUN_DATE - dt.timedelta(days=1))
        print(f"first day (a fresh workspace) in {first_wall:.0f} s", flush=True)
        snapshot = args.data / "after-first-day"
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(ws, snapshot, symlinks=True)
        results = {}
        for f in factors:
            shutil.rmtree(ws)
            shutil.copytree(snapshot, ws, symlinks=True)
            set_params(ws, **{"train.factors": f})
            load.append(os.getloadavg()[0])
            remote_before = remote_objects(ws)
            steps, wall, out = run_day(ws, env, RUN_DATE)
            train = json.loads((ws / "metrics/train.json").read_text())
            gate = json.loads((ws / "metrics/gate.json").read_text())
            fit = bare_fit(ws, env)
            load.append(os.getloadavg()[0])
            results[f] = {"steps": steps, "wall": wall, "train": train, "bare": fit, "gate": gate,
                          "pushed": pushed(ws, remote_before),
                          "disk": {name: tree_bytes(ws / name) / 2**20
                                   for name in (".dvc/cache", "data", "models")}}
            print(f"factors {f}: run {wall:.1f} s, bare fit {fit['fit_s']:.1f} s, "
                  f"ratio {wall / fit['fit_s']:.1f}x", flush=True)
    finally:
        redis.terminate()
        redis.wait(10)
    order = ["dvc pull", "recover", "fetch_delta", "merge_history", "validate", "filter_noise",
             "train", "evaluate", "publish", "dvc push", "dvc gc", "mlflow versions", "served",
             "report", "done"]
    names = [s for s in order if any(s in r["steps"] for r in results.values())]
    header = ["step"] + [f"factors {f}: s" for f in factors] + \
        [f"factors {f}: peak MB" for f in factors]
    rows = []
    for step in names:
        if step == "done":
            continue
        rows.append([step] + [results[f]["steps"].get(step, (0.0, None, ""))[0] for f in factors]
                    + [results[f]["steps"].get(step, (0, None, ""))[1] or "-" for f in factors])
    rows.append(["of which train's fit"] + [results[f]["train"]["durations_s"]["fit"]
                                            for f in factors] + ["-" for _ in factors])
    rows.append(["**whole run (wall)**"] + [results[f]["wall"] for f in factors]
                + ["-" for _ in factors])
    rows.append(["bare implicit fit, same matrix and settings"]
                + [results[f]["bare"]["fit_s"] for f in factors] + ["-" for _ in factors])
    rows.append(["**ratio**"] + [f"{results[f]['wall'] / results[f]['bare']['fit_s']:.1f}x"
                                 for f in factors] + ["-" for _ in factors])
    rows.append(["dvc push: MiB added to the remote"]
                + [f"{results[f]['pushed']['bytes'] / 2**20:.1f}" for f in factors]
                + ["-" for _ in factors])
    rows.append(["  of which data/clean's new day files"]
                + [f"{results[f]['pushed']['clean_new_bytes'] / 2**20:.1f} "
                   f"({results[f]['pushed']['clean_new']} of "
                   f"{results[f]['pushed']['clean_files']} files)" for f in factors]
                + ["-" for _ in factors])
    rows.append(["local DVC cache after the day (retention.dvc_cache), MiB"]
                + [f"{results[f]['disk']['.dvc/cache']:,.0f}" for f in factors]
                + ["-" for _ in factors])
    rows.append(["  the workspace's data/ and models/, MiB"]
                + [f"{results[f]['disk']['data'] + results[f]['disk']['models']:,.0f}"
                   for f in factors] + ["-" for _ in factors])
    rows.append(["the gate (publish runs only when it passes)"]
                + ["passed" if results[f]["gate"]["passed"] else "kept back" for f in factors]
                + ["-" for _ in factors])
    shape = next(iter(results.values()))["bare"]
    p = next(iter(results.values()))["pushed"]
    body = (f"A {FB.WINDOW_DAYS}-day window of about {args.events:,} simulator events "
            f"({shape['shape'][0]:,} users x {shape['shape'][1]:,} items, {shape['nnz']:,} "
            f"nonzeros after filter_noise), one new day arriving, `python -m stages.daily` timed "
            f"per step from its own progress lines (peak MB: each stage process's own peak RSS). "
            f"The first day of the fresh workspace took {first_wall:.0f} s. Load average (1 min) "
            f"during the run: {', '.join(f'{x:.1f}' for x in load)}.\n\n"
            + markdown_table(header, rows)
            + f"\n\ndata/clean is {p['clean_bytes'] / 2**20:,.0f} MiB in "
            f"{p['clean_files']} day files; the push adds the day files whose bytes the remote "
            f"does not hold yet (the layout before, one file, added all of it every day)."
            + "\n\nThe gate, per factors value: " + "; ".join(
                f"{f}: {results[f]['gate']['reason']}" for f in factors) + ".")
    publish("daily", "The whole daily run against a bare fit", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
