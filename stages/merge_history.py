"""merge_history: add the day's delta to the rolling, day-partitioned history.

    data/history/day=YYYY-MM-DD/events.parquet   canonical events of that event day, sorted by
                                                 (ts, event_id), as the day's own run wrote them
    data/history/day=YYYY-MM-DD/arrived-R.parquet  events of that day fetched by another run, the
                                                 one for run.date R (late writes, lookback re-reads,
                                                 a few minutes early by clock skew)
    data/quarantine/date=YYYY-MM-DD.parquet      each run's quarantined rows, kept beside history
    metrics/history.json                         days, rows, and what this run added

Only the partitions of the days the delta touches are read (usually one, plus a few late events'
days), so the cost follows the day's size, not the history's. A day's files are never rewritten
by another run: late events go to a small file of their own beside them, so `dvc push` uploads
the new day's file and about a hundred KB of late arrivals, not every day late events touched.
Events are unique on event_id across a day's files; re-running a day adds nothing (existing rows
win). Partitions older than history.days before run.date are removed. Writes go to a temp file and are renamed into place.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages import params as P
from stages import schema as S
from stages.fetch_delta import EVENTS_FILE, QUARANTINE_FILE

HISTORY_DIR = Path("data/history")
QUARANTINE_DIR = Path("data/quarantine")
METRICS_FILE = Path("metrics/history.json")
PARTITION_FILE = "events.parquet"
ARRIVED_PREFIX = "arrived-"


def partition_path(history: Path, day: dt.date) -> Path:
    """The day's own file, written by the run for the day after it."""
    return history / f"day={day.isoformat()}" / PARTITION_FILE


def partition_files(history: Path, day: dt.date) -> list[Path]:
    """Every file of a day's partition: its own file first, then other runs' arrivals by run date."""
    folder = history / f"day={day.isoformat()}"
    own = folder / PARTITION_FILE
    return ([own] if own.exists() else []) + sorted(folder.glob(f"{ARRIVED_PREFIX}*.parquet"))


def partition_rows(history: Path, day: dt.date) -> int:
    """Events in a day's partition, from the Parquet footers only."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in partition_files(history, day))


def partition_days(history: Path) -> list[dt.date]:
    days = []
    for path in history.glob("day=*"):
        try:
            days.append(dt.date.fromisoformat(path.name.removeprefix("day=")))
        except ValueError:
            raise P.ConfigError(f"{path}: not a day partition (expected day=YYYY-MM-DD)") from None
    return sorted(days)


def read_window(history: Path, first: dt.date, last: dt.date, columns=None) -> pa.Table:
    """Events of the days first..last (inclusive) as one canonical Arrow table."""
    paths = [p for d in partition_days(history) if first <= d <= last
             for p in partition_files(history, d)]
    if not paths:
        return S.EVENT_SCHEMA.empty_table() if columns is None else \
            S.EVENT_SCHEMA.empty_table().select(columns)
    tables = [S.conform(pq.read_table(p)) for p in paths]
    table = pa.concat_tables(tables)
    return table if columns is None else table.select(columns)


def merge_day(history: Path, day: dt.date, new: pa.Table, run_day: dt.date) -> tuple[int, int]:
    """Merge new events into one day's partition; returns (rows added, duplicates skipped).

    Each run writes only its own file: the run for the day after `day` writes the day's own file,
    any other run writes arrived-<run.date>.parquet beside it. Files written by other runs stay
    untouched, so they are not pushed again; re-running a run.date rewrites only its own file."""
    files = partition_files(history, day)
    known = pa.concat_tables([pq.read_table(p, columns=["event_id"]) for p in files]) \
        if files else pa.table({"event_id": pa.array([], pa.string())})
    target = partition_path(history, day) if run_day == day + dt.timedelta(days=1) \
        else history / f"day={day.isoformat()}" / f"{ARRIVED_PREFIX}{run_day.isoformat()}.parquet"
    fresh = new.filter(pc.invert(pc.is_in(new["event_id"], value_set=known["event_id"])))
    if fresh.num_rows == 0:
        return 0, new.num_rows
    existing = S.conform(pq.read_table(target)) if target.exists() else S.EVENT_SCHEMA.empty_table()
    merged = pa.concat_tables([existing, fresh]).to_pandas()
    merged = merged.drop_duplicates("event_id", keep="first")
    added = len(merged) - existing.num_rows
    merged = merged.sort_values(["ts", "event_id"], kind="stable")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".parquet.tmp")
    pq.write_table(S.to_table(merged), tmp)
    tmp.replace(target)
    return added, new.num_rows - added


def merge(params: dict, delta: Path = EVENTS_FILE, history: Path = HISTORY_DIR) -> dict:
    day = P.run_date(params)
    keep_days = int(P.section(params, "history").get("days", 365))
    oldest = day - dt.timedelta(days=keep_days)
    events = S.conform(pq.read_table(delta))
    event_day = pc.cast(pc.floor_temporal(events["ts"], unit="day"), pa.date32())
    added: dict[str, int] = {}
    duplicates = 0
    for d in pc.unique(event_day).to_pylist():  # a loop over days, not rows
        if d < oldest:
            continue  # fetch quarantines these as ts:too_old; never resurrect them
        rows, dups = merge_day(history, d, events.filter(pc.equal(event_day, pa.scalar(d))), day)
        added[d.isoformat()] = rows
        duplicates += dups
    removed = [d.isoformat() for d in partition_days(history) if d < oldest]
    for d in removed:
        shutil.rmtree(history / f"day={d}")
    days = partition_days(history)
    rows = sum(partition_rows(history, d) for d in days)
    return {
        "run_date": day.isoformat(),
        "days": len(days),
        "first_day": days[0].isoformat() if days else None,
        "last_day": days[-1].isoformat() if days else None,
        "rows": rows,
        "added": sum(added.values()),
        "added_by_day": added,
        "duplicates_skipped": duplicates,
        "partitions_removed": removed,
    }


def archive_quarantine(params: dict, source: Path = QUARANTINE_FILE,
                       archive: Path = QUARANTINE_DIR) -> int:
    """Keep the run's quarantine beside the history: nothing fetched is ever lost."""
    day = P.run_date(params)
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"date={day.isoformat()}.parquet"
    shutil.copyfile(source, target)
    keep_days = int(P.section(params, "history").get("days", 365))
    for old in archive.glob("date=*.parquet"):
        stamp = old.stem.removeprefix("date=")
        if stamp < (day - dt.timedelta(days=keep_days)).isoformat():
            old.unlink()
    return pq.ParquetFile(target).metadata.num_rows


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description="Merge data/delta/ into data/history/.")
    ap.add_argument("--params", default=str(P.PARAMS_FILE))
    args = ap.parse_args(argv)
    params = P.load(args.params)
    for path in (EVENTS_FILE, QUARANTINE_FILE):
        if not path.exists():
            raise P.ConfigError(f"{path} not found: run fetch_delta first")
    metrics = merge(params)
    metrics["quarantined"] = archive_quarantine(params)
    P.write_json(METRICS_FILE, metrics)
    print(f"merge_history {metrics['run_date']}: added {metrics['added']} "
          f"({metrics['duplicates_skipped']} already present); history {metrics['days']} days, "
          f"{metrics['rows']} events")
    return 0


def main(argv: list[str] | None = None) -> int:
    return P.run_stage("merge_history", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
