"""Ingestion speed: fetch_delta (DB read, normalise, dedup + write) and merge_history, for a day of
about 1M source rows and for a rolling history of 365 days and over 20M events.

    flock /tmp/dailyrec-bench.lock .venv/bin/python bench/ingest.py [--events-per-day 650000]
        [--history-events 20200000] [--workdir DIR]

1. The simulator writes one day (~1M rows over its three messy tables) into a temp SQLite file.
2. fetch_delta's parts are timed one by one on that day, in the stage's chunks (source.chunk_rows):
   the DB read (SQLAlchemy -> pandas frames), normalise (per table: the three tables carry
   different forms), then dedup + Parquet write; then the whole stage, fetch(), once more.
3. A 364-day history of canonical partitions is written directly (vectorised, not through the
   simulator), so that with the merged day it holds 365 days.
4. merge_history merges the day (all of it, and a 100k-row slice of it) into an empty history and
   into the 20M-event one, taking turns so both see the same machine, and re-runs the day (every
   row a duplicate).
With --source postgresql the same simulated day is loaded (COPY) into a private database that the
script creates and drops on --pg-url's server, and only fetch_delta is timed, from PostgreSQL: the
DB read (ADBC -> Arrow alone, then as the stage's chunks), normalise, dedup + write, and the whole
stage, now and as it was at --baseline (dailyrec/ingest/source.py of that commit, loaded from git), taking
turns REPEATS times so both see the same machine; the load average is read beside each run, and
the two deltas must hold the same rows and the same quarantine. Its table goes into its own part of
the section (the SQLite part of the last SQLite run is kept, and the other way round).

Every step runs in its own process, so each reports its own peak memory: the resident set
(getrusage ru_maxrss) and Arrow's allocator peak. Normalise and merge are timed REPEATS times; the
best run counts and the median is shown beside it (other work shares this machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import yaml  # noqa: E402

from bench.report import DOC, machine, markdown_table, publish  # noqa: E402
from dailyrec.ingest import history as H  # noqa: E402
from dailyrec.core import schema as S  # noqa: E402
from dailyrec.ingest import normalise as N  # noqa: E402
from dailyrec.core import settings  # noqa: E402
from dailyrec.ingest import database as DB  # noqa: E402
from dailyrec.ingest import source as F  # noqa: E402
from dailyrec.ingest import settings as ingest  # noqa: E402
from dailyrec.ingest import tables as source_tables  # noqa: E402
from tools import simulate  # noqa: E402

DAY = dt.date(2026, 11, 20)  # the simulated day; run.date is the day after
RUN_DATE = DAY + dt.timedelta(days=1)
HISTORY_DAYS = 364  # full days before DAY: with DAY merged, a 365-day history
SLICE_ROWS = 100_000
REPEATS = 3  # timed steps run this many times; the best counts (the median is shown beside it)
TARGET_NORMALISE = 1_000_000  # events/s
TARGET_FETCH = 1_000_000  # rows/s, fetch_delta end to end: a big shop's day within the night
# dailyrec/ingest/source.py before the fetch was sped up
BASELINE = "ca24bbfcc0d26f8c0b01e7a89b21e1517a38bcdf"
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def bench_params() -> settings.Params:
    """The shipped params.yaml with run.date set to RUN_DATE."""
    with open(ROOT / "params.yaml") as fh:
        raw = yaml.safe_load(fh)
    raw["run"]["date"] = RUN_DATE.isoformat()
    return settings.of(raw)


def peak_memory() -> dict:
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "arrow_mb": pa.default_memory_pool().max_memory() / 2**20}


# --- phases (each runs in its own process) -----------------------------------------------------

def phase_simulate(work: Path, args) -> dict:
    start = time.perf_counter()
    counts = simulate.write(f"sqlite:///{work / 'source.db'}", start=DAY, days=1, seed=7,
                            users=args.users, items=args.items,
                            events_per_day=args.events_per_day)
    return {"seconds": time.perf_counter() - start, "rows": sum(counts.values()), **counts}


def source_url(work: Path, args) -> str:
    if args.source == "postgresql":
        return sa.make_url(args.pg_url).set(drivername="postgresql+psycopg",
                                            database=pg_database(work)).render_as_string(False)
    return f"sqlite:///{work / 'source.db'}"


def pg_database(work: Path) -> str:
    """The private database of this run (named after its work directory's inode and pid)."""
    return (work / "pg-database").read_text().strip()


def phase_fetch_parts(work: Path, args) -> dict:
    """fetch()'s loop, with each part timed on its own."""
    params = bench_params()
    window = ingest.fetch_window(params)
    source = source_tables.source(params)
    chunk_rows, timeout_s = source.chunk_rows, source.timeout_seconds
    engine = DB.source_engine(source_url(work, args), timeout_s)
    arrow_s = None
    if args.source == "postgresql":  # the driver alone: the rows as Arrow batches, nothing else
        import adbc_driver_postgresql.dbapi as adbc

        start = time.perf_counter()
        with adbc.connect(engine.url.set(drivername="postgresql").render_as_string(False)) as conn:
            for cfg in source.tables:
                mapping, _ = DB.read_table(engine, cfg, window, chunk_rows, timeout_s)
                with conn.cursor() as cur:
                    cur.execute(arrow_query(engine, cfg, mapping, window))
                    for _ in cur.fetch_record_batch():
                        pass
        arrow_s = time.perf_counter() - start
    read_s, tables = 0.0, {}
    for cfg in source.tables:
        start = time.perf_counter()
        mapping, chunks = DB.read_table(engine, cfg, window, chunk_rows, timeout_s)
        raw = list(chunks)
        read_s += time.perf_counter() - start
        tables[cfg.name] = (cfg, mapping, raw)
    engine.dispose()
    # Then fetch()'s loop over the chunks, normalise and dedup + write timed apart, REPEATS times
    # (the write on the last pass only); each table's best pass counts. Wall and CPU seconds: on
    # a shared machine CPU seconds say what the code costs, wall what a run takes.
    per_table = {name: {"rows": sum(len(c) for c in raw), "passes": []}
                 for name, (_, _, raw) in tables.items()}
    write_s, kept = 0.0, 0
    for last in [False] * (REPEATS - 1) + [True]:
        seen = F.SeenIds()
        with pq.ParquetWriter(work / "parts-events.parquet", S.EVENT_SCHEMA) as writer:
            for name, (cfg, mapping, raw) in tables.items():
                wall = cpu = 0.0
                for chunk in raw:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    events, _, _ = F.normalise_table(chunk, cfg, mapping, window)
                    wall += time.perf_counter() - start
                    cpu += time.process_time() - start_cpu
                    if last:
                        start = time.perf_counter()
                        fresh, _ = seen.add(events["event_id"], F.content_hashes(events))
                        writer.write_table(F.take_rows(events, fresh))
                        kept += int(fresh.sum())
                        write_s += time.perf_counter() - start
                per_table[name]["passes"].append((wall, cpu))
    # A baseline for the dearest column (web_events.ts, ISO text in several zones): pandas' own
    # ISO 8601 parser, which alone would not even read the epoch forms.
    cfg, mapping, raw = tables["web_events"]
    columns = [chunk[mapping["ts"]] for chunk in raw]
    ts_ours, ts_pandas = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for column in columns:
            N.canonical_timestamps(column)
        ts_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        for column in columns:
            pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
        ts_pandas.append(time.perf_counter() - start)
    for t in per_table.values():
        t["seconds"], t["cpu_s"] = min(t["passes"])
        t["median_s"] = float(np.median([wall for wall, _ in t["passes"]]))
    return {"rows": sum(t["rows"] for t in per_table.values()), "kept": kept, "read_s": read_s,
            "arrow_s": arrow_s,
            "normalise_s": sum(t["seconds"] for t in per_table.values()),
            "normalise_median_s": sum(t["median_s"] for t in per_table.values()),
            "normalise_cpu_s": sum(t["cpu_s"] for t in per_table.values()),
            "write_s": write_s, "tables": per_table, "ts_rows": sum(map(len, columns)),
            "ts_ours_s": min(ts_ours), "ts_pandas_s": min(ts_pandas), **peak_memory()}


def arrow_query(engine: sa.Engine, cfg, mapping: dict, window) -> str:
    """The SELECT read_table sends for a table (the same columns and window), as text."""
    table = sa.Table(cfg.name, sa.MetaData(), autoload_with=engine)
    wcol = table.c[cfg.window_column]
    start = window.start - dt.timedelta(days=cfg.lookback_days)
    stmt = (sa.select(*[table.c[c] for c in dict.fromkeys(mapping.values())])
            .where(wcol >= DB._bound(start, cfg.window_format, wcol.type),
                   wcol < DB._bound(window.end, cfg.window_format, wcol.type)))
    return str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def load_avg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def baseline_module(work: Path):
    """dailyrec/ingest/source.py as it was at BASELINE (args.baseline), imported from git."""
    path = work / "baseline_source.py"
    module = importlib.util.spec_from_file_location("baseline_source", path)
    loaded = importlib.util.module_from_spec(module)
    module.loader.exec_module(loaded)
    return loaded


def phase_fetch(work: Path, args) -> dict:
    params = bench_params()
    source, window = source_tables.source(params), ingest.fetch_window(params)
    impl = baseline_module(work) if args.impl == "baseline" else F
    out = work / ("delta" if args.source == "sqlite" else f"delta-{args.impl}")
    load = load_avg()
    start, start_cpu = time.perf_counter(), time.process_time()
    metrics = impl.fetch(source, window, source_url(work, args), out)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    if args.source == "postgresql":
        return {"seconds": seconds, "cpu_s": cpu, "load_before": load, "load_after": load_avg(),
                "rows": metrics["fetched"], "kept": metrics["kept"],
                "quarantined": metrics["quarantined"], "duplicates": metrics["duplicates"],
                "metrics": {k: v for k, v in metrics.items() if k != "tables"}, **peak_memory()}
    # The 100k-row day for the merges: a slice of the real delta.
    delta = pq.read_table(work / "delta" / "events.parquet")
    pq.write_table(delta.slice(0, SLICE_ROWS), work / "slice.parquet")
    return {"seconds": seconds, "rows": metrics["fetched"], "kept": metrics["kept"],
            "quarantined": metrics["quarantined"], "duplicates": metrics["duplicates"],
            **peak_memory()}


def phase_build_history(work: Path, args) -> dict:
    """HISTORY_DAYS canonical partitions, as merge_history writes them (sorted, unique ids)."""
    rng = np.random.default_rng(0)
    per_day = -(-args.history_events // HISTORY_DAYS)
    history = work / "history"
    types = pa.array(list(S.EVENT_TYPES))
    agents = pa.array(list(simulate.BROWSER_UAS) + list(simulate.APP_UAS))
    start = time.perf_counter()
    for back in range(HISTORY_DAYS, 0, -1):
        day = DAY - dt.timedelta(days=back)
        day_us = int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp() * 1e6)
        ts = np.sort(day_us + rng.integers(0, 86_400_000_000, per_day))
        serial = pa.array(np.arange(per_day))
        table = S.conform(pa.table({
            "event_id": pc.binary_join_element_wise(f"hist:{day:%Y%m%d}-",
                                                    serial.cast(pa.string()), ""),
            "user_id": pa.array(rng.zipf(1.3, per_day) % 200_000).cast(pa.string()),
            "item_id": pa.array(rng.zipf(1.2, per_day) % 40_000).cast(pa.string()),
            "event_type": types.take(pa.array(rng.choice(4, per_day, p=simulate.FUNNEL))),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "source": pa.repeat(pa.scalar("web_events"), per_day),
            "user_agent": agents.take(pa.array(rng.integers(0, len(agents), per_day))),
            "ip": pa.array(rng.integers(0, 2**32, per_day, dtype=np.uint32)).cast(pa.string()),
        }))
        path = H.partition_path(history, day)
        path.parent.mkdir(parents=True)
        pq.write_table(table, path)
    size = sum(p.stat().st_size for p in history.rglob("*.parquet"))
    return {"seconds": time.perf_counter() - start, "days": HISTORY_DAYS,
            "rows": per_day * HISTORY_DAYS, "mb": size / 2**20}


def timed_merge(history: Path, delta: Path, undo: bool) -> tuple[float, dict]:
    """One merge_history run; with undo, DAY's new partition is dropped again afterwards."""
    history.mkdir(exist_ok=True)
    before = H.partition_days(history)
    params = bench_params()
    run_day, keep_days = settings.run_date(params), ingest.history_days(params)
    start = time.perf_counter()
    metrics, _ = H.merge(delta, history, run_day, keep_days, ingest.max_late(params).days)
    seconds = time.perf_counter() - start
    if undo:
        assert DAY not in before and H.partition_days(history) == sorted([*before, DAY])
        shutil.rmtree(H.partition_path(history, DAY).parent)
    return seconds, {**metrics, "history_days": len(before),
                     "history_rows": metrics["rows"] - metrics["added"]}


def summary(times: list[float], metrics: dict) -> dict:
    return {"seconds": min(times), "median_s": float(np.median(times)), "added": metrics["added"],
            "history_days": metrics["history_days"], "history_rows": metrics["history_rows"]}


def phase_merge(work: Path, args) -> dict:
    """The delta (args.delta, all of DAY) into an empty history and into the big one, taking turns
    REPEATS times (so both see the same machine), each merge undone; the best time counts."""
    delta = work / args.delta
    times: dict[str, list[float]] = {"empty": [], "big": []}
    last = {}
    for _ in range(REPEATS):
        for target, history in (("empty", work / "empty"), ("big", work / "history")):
            seconds, last[target] = timed_merge(history, delta, undo=True)
            times[target].append(seconds)
    rows = pq.ParquetFile(delta).metadata.num_rows
    return {"rows": rows, **{t: summary(times[t], last[t]) for t in times}, **peak_memory()}


def phase_rerun(work: Path, args) -> dict:
    """The day merged into the big history, then merged again REPEATS times (all duplicates)."""
    delta, history = work / args.delta, work / "history"
    timed_merge(history, delta, undo=False)
    times = []
    for _ in range(REPEATS):
        seconds, metrics = timed_merge(history, delta, undo=False)
        times.append(seconds)
    shutil.rmtree(H.partition_path(history, DAY).parent)
    return {"rows": pq.ParquetFile(delta).metadata.num_rows, **summary(times, metrics),
            **peak_memory()}


def phase_pg_load(work: Path, args) -> dict:
    """The simulator's day (as phase_simulate writes it: same seed, same rows) into the private
    database: each table created by pandas with the types to_sql gives it, then one COPY."""
    pop = simulate.Population(7, args.users, args.items)
    truth = simulate.build_truth(7, args.users)
    tables = simulate.simulate_day(7, DAY, pop, truth, args.events_per_day)
    engine = sa.create_engine(source_url(work, args))
    start = time.perf_counter()
    with engine.begin() as conn:
        for name, frame in tables.items():
            frame.head(0).to_sql(name, conn, index=False)
            columns = ", ".join(f'"{c}"' for c in frame.columns)
            with conn.connection.driver_connection.cursor() as cur:
                with cur.copy(f'COPY "{name}" ({columns}) FROM STDIN (FORMAT csv)') as copy:
                    copy.write(frame.to_csv(index=False, header=False))
        conn.exec_driver_sql("ANALYZE")
    seconds = time.perf_counter() - start
    engine.dispose()
    counts = {name: len(frame) for name, frame in tables.items()}
    return {"seconds": seconds, "rows": sum(counts.values()), **counts}


def phase_pg_compare(work: Path, args) -> dict:
    """The deltas of the baseline and of the current code: the same rows and the same quarantine
    (sorted: PostgreSQL returns rows of a parallel or synchronised scan in varying order)."""
    def rows(impl: str, name: str) -> pa.Table:
        table = pq.read_table(work / f"delta-{impl}" / name)
        return table.sort_by([(c, "ascending") for c in table.column_names])

    same = {name: rows("baseline", name).equals(rows("new", name))
            for name in ("events.parquet", "quarantine.parquet")}
    return {"same_events": same["events.parquet"], "same_quarantine": same["quarantine.parquet"]}


PHASES = {"simulate": phase_simulate, "pg_load": phase_pg_load, "pg_compare": phase_pg_compare, "fetch_parts": phase_fetch_parts, "fetch": phase_fetch,
          "build_history": phase_build_history, "merge": phase_merge,
          "rerun": phase_rerun}


# --- the driver ---------------------------------------------------------------------------------

def run_phase(work: Path, args, name: str, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--workdir", str(work),
           "--events-per-day", str(args.events_per_day), "--users", str(args.users),
           "--items", str(args.items), "--history-events", str(args.history_events),
           "--source", args.source, "--pg-url", args.pg_url, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"phase {name} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {name} {' '.join(extra)} done", flush=True)
    return result


def peak(result: dict) -> dict:
    return {"rss_mb": result["rss_mb"], "arrow_mb": result["arrow_mb"]}


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds else float("nan")


def report(sim: dict, parts: dict, whole: dict, built: dict, merges: dict, args) -> str:
    mem = lambda r: f"{r['rss_mb']:,.0f} / {r['arrow_mb']:,.0f}"  # noqa: E731
    normalise_rate = rate(parts["rows"], parts["normalise_s"])
    normalise_cpu_rate = rate(parts["rows"], parts["normalise_cpu_s"])
    once = "(one run)"
    rows = [
        ["DB read: SQLite -> pandas, 3 tables", parts["rows"], parts["read_s"], once,
         rate(parts["rows"], parts["read_s"]), ""],
        ["normalise, all tables", parts["rows"], parts["normalise_s"],
         parts["normalise_median_s"], normalise_rate,
         f"{normalise_cpu_rate:,.0f} events/s of CPU time"],
        *[[f"normalise {name}", t["rows"], t["seconds"], t["median_s"],
           rate(t["rows"], t["seconds"]),
           f"{rate(t['rows'], t['cpu_s']):,.0f} events/s of CPU time"]
          for name, t in parts["tables"].items()],
        ["parse web_events.ts: canonical_timestamps", parts["ts_rows"], parts["ts_ours_s"], "",
         rate(parts["ts_rows"], parts["ts_ours_s"]),
         f"x{parts['ts_pandas_s'] / parts['ts_ours_s']:.1f} faster than the baseline below"],
        ["baseline: pd.to_datetime(format='ISO8601', utc=True)", parts["ts_rows"],
         parts["ts_pandas_s"], "", rate(parts["ts_rows"], parts["ts_pandas_s"]),
         "ISO text only"],
        ["dedup + write the delta Parquet", parts["rows"], parts["write_s"], once,
         rate(parts["rows"], parts["write_s"]), mem(parts)],
        ["fetch_delta, whole stage (read + normalise + write)", whole["rows"], whole["seconds"],
         once, rate(whole["rows"], whole["seconds"]), mem(whole)],
    ]
    for key, label in (("empty_1m", "merge the day into an empty history"),
                       ("big_1m", f"merge the day into the {HISTORY_DAYS}-day history"),
                       ("rerun_1m", "re-run the day (every row already there)"),
                       ("empty_slice", f"merge {SLICE_ROWS:,} rows into an empty history"),
                       ("big_slice", f"merge {SLICE_ROWS:,} rows into the {HISTORY_DAYS}-day "
                                     "history")):
        m = merges[key]
        rows.append([label, m["rows"], m["seconds"], m["median_s"],
                     rate(m["rows"], m["seconds"]), mem(m)])
    total_s = whole["seconds"] + merges["big_1m"]["seconds"]
    rows.append(["fetch + merge into the history, end to end", whole["rows"], total_s, "",
                 rate(whole["rows"], total_s), ""])
    table = markdown_table(["step", "events", f"best s of {REPEATS}", "median s", "events/s",
                            "peak MB (RSS / Arrow), notes"], rows)
    big, empty = merges["big_1m"], merges["empty_1m"]
    big_s, empty_s = merges["big_slice"], merges["empty_slice"]
    verdict = lambda r: "meets" if r >= TARGET_NORMALISE else "misses"  # noqa: E731
    return (
        f"One simulated day in SQLite: {sim['rows']:,} source rows ({sim['web_events']:,} "
        f"web_events, {sim['app_events']:,} app_events, {sim['legacy_clicks']:,} legacy_clicks; "
        f"simulator with {args.users:,} users, {args.items:,} items, {args.events_per_day:,} "
        f"human events plus bots and messy rows), read for run.date {RUN_DATE} in chunks of "
        f"200,000 rows: {whole['rows']:,} rows fetched, {whole['kept']:,} kept, "
        f"{whole['quarantined']:,} quarantined, {whole['duplicates']:,} duplicates.\n\n"
        f"The history: {built['days']} days of canonical partitions, {built['rows']:,} events "
        f"({built['mb']:,.0f} MB of Parquet, written directly in {built['seconds']:.0f} s); with "
        f"the merged day it holds 365 days and {big['history_rows'] + big['added']:,} events. "
        f"Each step ran in its own process; peak RSS includes the interpreter and libraries "
        f"(about 150 MB). Normalise and merge ran {REPEATS} times each: the best time shows what "
        f"the code costs, the median what a busy shared machine gives.\n\n{table}\n\n"
        f"- Normalisation: {normalise_rate:,.0f} events/s of wall time, {normalise_cpu_rate:,.0f} "
        f"events/s of CPU time ({verdict(normalise_rate)} / {verdict(normalise_cpu_rate)} the "
        f"target of 1M events/s). web_events is the dearest table: ISO text times in several "
        f"zones, text ids, long user agents.\n"
        f"- Merge, history vs day: the day into the {HISTORY_DAYS}-day, "
        f"{big['history_rows']:,}-event history took {big['seconds']:.2f} s against "
        f"{empty['seconds']:.2f} s into an empty one (x{big['seconds'] / empty['seconds']:.2f}); "
        f"{SLICE_ROWS:,} rows took {big_s['seconds']:.2f} s against {empty_s['seconds']:.2f} s "
        f"(x{big_s['seconds'] / empty_s['seconds']:.2f}). The day took "
        f"{big['seconds'] / big_s['seconds']:.1f}x as long as the {SLICE_ROWS:,} rows for "
        f"{big['rows'] / big_s['rows']:.1f}x the rows: merge time grows with the day. "
        f"merge_history reads and rewrites only the partitions of the days in the delta; of the "
        f"other {HISTORY_DAYS} it lists the folders and reads the Parquet footers for the row "
        f"count, a fixed cost of a few hundredths to tenths of a second.\n"
        f"- fetch_delta is bound by the DB read ({parts['read_s']:.1f} s here): SQLite and the "
        f"Python rows it returns cost more than normalisation, dedup and the Parquet write "
        f"together.\n"
    )


def pg_report(loaded: dict, parts: dict, runs: list[dict], compare: dict, args) -> str:
    once = "(one run)"
    ms = lambda r: f"{r['rss_mb']:,.0f} / {r['arrow_mb']:,.0f}"  # noqa: E731
    by_impl = {impl: [r for r in runs if r["impl"] == impl] for impl in ("baseline", "new")}
    best = {impl: min(rs, key=lambda r: r["seconds"]) for impl, rs in by_impl.items()}
    median = {impl: float(np.median([r["seconds"] for r in rs])) for impl, rs in by_impl.items()}
    rows = parts["rows"]
    table = markdown_table(
        ["step", "rows", "best s", "median s", "rows/s", "peak MB (RSS / Arrow), notes"], [
            ["DB read: PostgreSQL -> Arrow batches (ADBC alone), 3 tables", rows,
             parts["arrow_s"], once, rate(rows, parts["arrow_s"]), "the driver's floor"],
            ["DB read: PostgreSQL -> the stage's chunks (read_table)", rows, parts["read_s"],
             once, rate(rows, parts["read_s"]), ""],
            ["normalise, all tables", rows, parts["normalise_s"], parts["normalise_median_s"],
             rate(rows, parts["normalise_s"]),
             f"{rate(rows, parts['normalise_cpu_s']):,.0f} rows/s of CPU time"],
            ["dedup + write the delta Parquet", rows, parts["write_s"], once,
             rate(rows, parts["write_s"]), ms(parts)],
            *[[f"fetch_delta, whole stage: {label}", best[impl]["rows"], best[impl]["seconds"],
               median[impl], rate(best[impl]["rows"], best[impl]["seconds"]), ms(best[impl])]
              for impl, label in (("baseline", f"before (source.py of {args.baseline[:7]})"),
                                  ("new", "now"))],
        ])
    turns = markdown_table(
        ["run", "code", "s", "rows/s", "CPU s (this process)", "load average (1 min) before / after"],
        [[i + 1, "before" if r["impl"] == "baseline" else "now", r["seconds"],
          rate(r["rows"], r["seconds"]), r["cpu_s"], f"{r['load_before']:.2f} / {r['load_after']:.2f}"]
         for i, r in enumerate(runs)])
    now, before = best["new"], best["baseline"]
    verdict = "meets" if rate(now["rows"], now["seconds"]) >= TARGET_FETCH else "misses"
    same = compare["same_events"] and compare["same_quarantine"] and compare["same_metrics"]
    return (
        f"The same simulated day in PostgreSQL ({PG_VERSION[0]}, on {args.pg_url.split('@')[-1]}, "
        f"a private database created for the run and dropped after it; loaded with COPY in "
        f"{loaded['seconds']:.1f} s): {loaded['rows']:,} source rows ({loaded['web_events']:,} "
        f"web_events, {loaded['app_events']:,} app_events, {loaded['legacy_clicks']:,} "
        f"legacy_clicks), read through ADBC for run.date {RUN_DATE}: {now['rows']:,} rows "
        f"fetched, {now['kept']:,} kept, {now['quarantined']:,} quarantined, "
        f"{now['duplicates']:,} duplicates. The parts were timed in one process (normalise "
        f"{REPEATS} times); the whole stage ran {REPEATS} times as it is now and {REPEATS} times "
        f"as it was before (dailyrec/ingest/source.py of commit {args.baseline[:7]}, loaded from git), "
        f"taking turns, each in its own process.\n\n{table}\n\nEach end-to-end run, in the order "
        f"they ran:\n\n{turns}\n\n"
        f"- End to end from PostgreSQL: {rate(now['rows'], now['seconds']):,.0f} rows/s now "
        f"against {rate(before['rows'], before['seconds']):,.0f} rows/s before (best runs; x"
        f"{before['seconds'] / now['seconds']:.2f}); it {verdict} the target of "
        f"{TARGET_FETCH:,} rows/s.\n"
        f"- Same result: {'yes' if same else 'NO'}: the two deltas hold the same rows "
        f"({'same' if compare['same_events'] else 'DIFFERENT'} events, "
        f"{'same' if compare['same_quarantine'] else 'DIFFERENT'} quarantine, compared sorted: "
        f"PostgreSQL hands rows of a parallel or synchronised scan over in varying order, so two "
        f"runs of either code differ in row order) and the same counts per reason "
        f"({'same' if compare['same_metrics'] else 'DIFFERENT'} metrics).\n"
        f"- The CPU bound: the stage's own process took {now['cpu_s']:.2f} s of CPU in its best "
        f"run; on {os.cpu_count()} cores, shared with PostgreSQL's server, it cannot take less "
        f"than {now['cpu_s'] / (os.cpu_count() or 1):.2f} s "
        f"({rate(now['rows'], now['cpu_s'] / (os.cpu_count() or 1)):,.0f} rows/s) however its "
        f"steps overlap (now: the driver's reads on a thread of their own, "
        f"dailyrec/ingest/streams.prefetched, while the main thread normalises and writes).\n"
    )


PG_VERSION = ["PostgreSQL"]
PARTS = ("sqlite", "postgresql")


def section_part(mode: str, body: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = "" if mode == "sqlite" else " --source postgresql"
    title = "From SQLite, with merge_history" if mode == "sqlite" else "fetch_delta from PostgreSQL"
    return (f"<!-- ingest:{mode} -->\n### {title}\n\nMachine: {machine()}; run {stamp} "
            f"(`python bench/ingest.py{flags}`).\n\n{body.strip()}\n<!-- /ingest:{mode} -->")


def kept_part(mode: str) -> str | None:
    """The other mode's part of the section, as the last run of that mode left it. A section
    written before the parts existed is all SQLite: its machine line moves into the part."""
    text = DOC.read_text() if DOC.exists() else ""
    found = re.search(r"<!-- bench:ingest -->(.*?)<!-- /bench:ingest -->", text, re.S)
    if not found:
        return None
    section = found.group(1)
    part = re.search(rf"<!-- ingest:{mode} -->.*?<!-- /ingest:{mode} -->", section, re.S)
    if part:
        return part.group(0)
    if mode != "sqlite" or "<!-- ingest:" in section or "One simulated day in SQLite" not in section:
        return None
    machine_line = re.search(r"^Machine: .*$", section, re.M)
    body = section[section.index("One simulated day in SQLite"):].strip()
    return (f"<!-- ingest:sqlite -->\n### From SQLite, with merge_history\n\n"
            f"{machine_line.group(0) if machine_line else ''}\n\n{body}\n<!-- /ingest:sqlite -->")


def publish_part(mode: str, body: str) -> None:
    parts = {mode: section_part(mode, body)}
    for other in PARTS:
        if other != mode:
            kept = kept_part(other)
            if kept:
                parts[other] = kept
    publish("ingest", "Ingestion: fetch_delta and merge_history throughput",
            "\n\n".join(parts[m] for m in PARTS if m in parts))


def run_postgresql(work: Path, args) -> str:
    """The PostgreSQL mode's runs (see the module's docstring); returns its part's body."""
    database = f"dailyrec_bench_ingest_{os.getpid()}"
    (work / "pg-database").write_text(database)
    baseline = subprocess.run(["git", "show", f"{args.baseline}:dailyrec/ingest/source.py"], cwd=ROOT,
                              capture_output=True, text=True)
    if baseline.returncode != 0:
        sys.exit(f"cannot read dailyrec/ingest/source.py of {args.baseline}: {baseline.stderr.strip()}")
    (work / "baseline_source.py").write_text(baseline.stdout)
    admin = sa.create_engine(sa.make_url(args.pg_url).set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        PG_VERSION[0] = "PostgreSQL " + conn.exec_driver_sql("SHOW server_version").scalar()
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    try:
        loaded = run_phase(work, args, "pg_load")
        parts = run_phase(work, args, "fetch_parts")
        runs = []
        for _ in range(REPEATS):
            for impl in ("baseline", "new"):
                runs.append({**run_phase(work, args, "fetch", "--impl", impl), "impl": impl})
        compare = run_phase(work, args, "pg_compare")
        metrics = {impl: [r["metrics"] for r in runs if r["impl"] == impl]
                   for impl in ("baseline", "new")}
        compare["same_metrics"] = all(m == metrics["baseline"][0]
                                      for m in metrics["baseline"] + metrics["new"])
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()
    return pg_report(loaded, parts, runs, compare, args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events-per-day", type=int, default=650_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--history-events", type=int, default=20_200_000)
    ap.add_argument("--source", choices=PARTS, default="sqlite",
                    help="where the simulated day is read from (default sqlite)")
    ap.add_argument("--pg-url", default=PG_URL,
                    help=f"a PostgreSQL server where a private database may be created and "
                         f"dropped (default {PG_URL})")
    ap.add_argument("--baseline", default=BASELINE,
                    help="the commit whose dailyrec/ingest/source.py is timed as 'before' (postgresql)")
    ap.add_argument("--workdir", help="keep the data here (default: a temp dir, removed)")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=("new", "baseline"), default="new", help=argparse.SUPPRESS)
    ap.add_argument("--delta", default="delta/events.parquet", help=argparse.SUPPRESS)
    ap.add_argument("--no-publish", action="store_true", help="print only (a smoke run)")
    args = ap.parse_args(argv)

    if args.phase:
        print(json.dumps(PHASES[args.phase](Path(args.workdir), args)))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dailyrec-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"working in {work}", flush=True)
        if args.source == "postgresql":
            body = run_postgresql(work, args)
        else:
            sim = run_phase(work, args, "simulate")
            parts = run_phase(work, args, "fetch_parts")
            whole = run_phase(work, args, "fetch")
            built = run_phase(work, args, "build_history")
            day = run_phase(work, args, "merge")
            part = run_phase(work, args, "merge", "--delta", "slice.parquet")
            rerun = run_phase(work, args, "rerun")
            merges = {"empty_1m": {**day["empty"], "rows": day["rows"], **peak(day)},
                      "big_1m": {**day["big"], "rows": day["rows"], **peak(day)},
                      "empty_slice": {**part["empty"], "rows": part["rows"], **peak(part)},
                      "big_slice": {**part["big"], "rows": part["rows"], **peak(part)},
                      "rerun_1m": rerun}
            body = report(sim, parts, whole, built, merges, args)
        if args.no_publish:
            print(body)
        else:
            publish_part(args.source, body)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
