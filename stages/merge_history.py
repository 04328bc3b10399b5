"""merge_history: add the day's delta to the rolling, day-partitioned history.

    data/history/day=YYYY-MM-DD/events.parquet   canonical events of that event day, sorted by
                                                 (ts, event_id), unique on event_id
    data/quarantine/date=YYYY-MM-DD.parquet      each run's quarantined rows, kept beside history
    metrics/history.json                         days, rows, and what this run added

Only the partitions of the days the delta touches are read and rewritten (usually one, plus a few
late events' days), so the cost follows the day's size, not the history's. Re-running a day adds
nothing: events deduplicate on event_id, existing rows first. Partitions older than history.days
before run.date are removed. Writes go to a temp file and are renamed into place.
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


def partition_path(history: Path, day: dt.date) -> Path:
    return history / f"day={day.isoformat()}" / PARTITION_FILE


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
    paths = [partition_path(history, d) for d in partition_days(history) if first <= d <= last]
    if not paths:
        return S.EVENT_SCHEMA.empty_table() if columns is None else \
            S.EVENT_SCHEMA.empty_table().select(columns)
    tables = [S.conform(pq.read_table(p)) for p in paths]
    table = pa.concat_tables(tables)
    return table if columns is None else table.select(columns)


def merge_day(history: Path, day: dt.date, new: pa.Table) -> tuple[int, int]:
    """Merge new events into one day's partition; returns (rows added, duplicates skipped)."""
    path = partition_path(history, day)
    old = S.conform(pq.read_table(path)) if path.exists() else S.EVENT_SCHEMA.empty_table()
    both = pa.concat_tables([old, new]).to_pandas()
    merged = both.drop_duplicates("event_id", keep="first")  # existing rows win
    added = len(merged) - old.num_rows
    if added == 0 and path.exists():
        return 0, len(new)
    merged = merged.sort_values(["ts", "event_id"], kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(S.to_table(merged), tmp)
    tmp.replace(path)
    return added, len(new) - added


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
        rows, dups = merge_day(history, d, events.filter(pc.equal(event_day, pa.scalar(d))))
        added[d.isoformat()] = rows
        duplicates += dups
    removed = [d.isoformat() for d in partition_days(history) if d < oldest]
    for d in removed:
        shutil.rmtree(history / f"day={d}")
    days = partition_days(history)
    rows = sum(pq.ParquetFile(partition_path(history, d)).metadata.num_rows for d in days)
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
