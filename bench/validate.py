"""Benchmark: validate's window suite from per-file facts against Great Expectations on the window.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/validate.py [--events 20000000]

The 60-day window is bench/filter.py's (simulator traffic, written once under --data, default
/tmp/dailyrec-bench-validate), plus one more day for the next run. Each row is validate
(dailyrec.quality.validation.expectations.validate: the delta suites on one day, the ledger, the window
suites) in a fresh process, with its wall time and its own peak RSS:
  1. Great Expectations on the whole window (no facts: what validate did before);
  2. facts, cold: every file of the window read once and its facts kept;
  3. facts, the next run.date: one new day file read, 59 reused (the daily case);
  4. facts, the same run again: nothing read.
Rows 1 and 2 must give the same expectations, to the last digit (checked; the run fails if not).
The table goes to docs/benchmarks.md (section "validate").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import filter as BF  # noqa: E402
from bench.report import markdown_table, publish  # noqa: E402
from dailyrec.core import schema as S  # noqa: E402
from dailyrec.ingest.history import partition_path  # noqa: E402
from tools import simulate as SIM  # noqa: E402


def child(args) -> int:
    """One validate run in this (fresh) process; prints a JSON line."""
    from dailyrec.core import settings
    from dailyrec.quality.validation import verdict as VD
    from dailyrec.quality import settings as quality

    raw = BF.raw_params()
    raw["run"]["date"] = args.run_date
    cfg = quality.validate(settings.of(raw))
    work = Path(args.work)
    started = time.perf_counter()
    verdict = VD.validate(cfg, work / "delta.parquet", work / "quarantine.parquet",
                         Path(args.history), work / f"ledger-{os.getpid()}.json", "report.html",
                         facts_dir=Path(args.facts) if args.facts else None)
    seconds = time.perf_counter() - started
    payload = VD.payload(cfg, verdict)
    print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "status": verdict.status,
        "window_events": verdict.window_events, "by": verdict.window_checked_by,
        "expectations": payload["expectations"]}))
    return 0


def run_child(history: Path, work: Path, run_date: dt.date, facts: Path | None) -> dict:
    """validate for run_date, its delta being the day before's file."""
    shutil.copyfile(partition_path(history, run_date - dt.timedelta(days=1)),
                    work / "delta.parquet")
    cmd = [sys.executable, __file__, "--phase", "child", "--history", str(history), "--work",
           str(work), "--run-date", run_date.isoformat(), "--facts", str(facts or "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"validate failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20_000_000, help="events in the window")
    ap.add_argument("--data", type=Path, default=Path("/tmp/dailyrec-bench-validate"))
    ap.add_argument("--phase", choices=["child"], help=argparse.SUPPRESS)
    for name in ("--history", "--work", "--run-date", "--facts"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "child":
        return child(args)

    print(f"building or reusing the window under {args.data} ...", flush=True)
    history, truth = BF.build(args.data, args.events)
    run_date = BF.RUN_DATE
    next_day = partition_path(history, run_date)  # the day the next run adds
    if not next_day.exists():
        per_day = pq.ParquetFile(partition_path(history, run_date - dt.timedelta(days=1)))
        pop = SIM.Population(BF.SEED, BF.USERS, BF.ITEMS)
        humans = int(per_day.metadata.num_rows * 0.9)
        next_day.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(BF.canonical_day(pop, truth, run_date, humans), next_day)
    work = args.data / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    pq.write_table(S.QUARANTINE_SCHEMA.empty_table(), work / "quarantine.parquet")
    facts = work / "facts"
    load = []

    def timed(label: str, when: dt.date, facts_dir: Path | None) -> dict:
        result = run_child(history, work, when, facts_dir)
        load.append(os.getloadavg()[0])
        print(f"  {label}: {result['seconds']:.1f} s, peak {result['peak_mb']:,.0f} MB, "
              f"{result['by']}", flush=True)
        return {**result, "label": label, "load": load[-1]}

    rows = [timed("Great Expectations on the whole window", run_date, None),
            timed("facts, cold (every file read once)", run_date, facts),
            timed("facts, next run.date (one new day)", run_date + dt.timedelta(days=1), facts),
            timed("facts, the same run again", run_date + dt.timedelta(days=1), facts)]
    same = rows[0]["expectations"] == rows[1]["expectations"]
    base = rows[0]["seconds"]
    table = markdown_table(
        ["validate (fresh process)", "run.date", "window events", "seconds", "vs GX",
         "peak MB", "window checked by", "load avg"],
        [[r["label"], d.isoformat(), f"{r['window_events']:,}", f"{r['seconds']:.1f}",
          f"{base / r['seconds']:.1f}x", f"{r['peak_mb']:,.0f}", r["by"], f"{r['load']:.1f}"]
         for r, d in zip(rows, [run_date, run_date, run_date + dt.timedelta(days=1),
                                run_date + dt.timedelta(days=1)])])
    body = (
        f"bench/filter.py's {BF.WINDOW_DAYS}-day window of simulator traffic plus the next day; "
        f"each row is `expectations.validate` (delta suites on one day, the ledger, the window "
        f"suites) in a fresh process, one run each. Status of every run: "
        f"{', '.join(r['status'] for r in rows)}.\n\n" + table +
        f"\n\nThe facts path and Great Expectations give the same {len(rows[0]['expectations'])} "
        f"expectations to the last digit: {'yes' if same else 'NO'}. The daily case (one new "
        f"day) takes **{base / rows[2]['seconds']:.1f}x** less time than Great Expectations on the "
        f"window, with a peak of {rows[2]['peak_mb']:,.0f} MB against {rows[0]['peak_mb']:,.0f} "
        f"MB.")
    publish("validate", "validate: the window suite from per-file facts", body)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
