"""The rolling, day-partitioned history: its layout, which files make a day, the merge of a delta,
and the selection of a training window.

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

import datetime as dt
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec import schema as S
from dailyrec.errors import DataError
from dailyrec.files import tmp_path

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
            raise DataError(f"{path}: not a day partition (expected day=YYYY-MM-DD)") from None
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
    tmp = tmp_path(target)
    pq.write_table(S.to_table(merged), tmp)
    tmp.replace(target)
    return added, new.num_rows - added


def merge(delta: Path, history: Path, run_day: dt.date, keep_days: int) -> dict:
    """Merge the delta's events into their days' partitions and drop partitions older than
    keep_days before run_day; returns what was added (the stage writes it as metrics)."""
    oldest = run_day - dt.timedelta(days=keep_days)
    events = S.conform(pq.read_table(delta))
    event_day = pc.cast(pc.floor_temporal(events["ts"], unit="day"), pa.date32())
    added: dict[str, int] = {}
    duplicates = 0
    for d in pc.unique(event_day).to_pylist():  # a loop over days, not rows
        if d < oldest:
            continue  # fetch quarantines these as ts:too_old; never resurrect them
        rows, dups = merge_day(history, d, events.filter(pc.equal(event_day, pa.scalar(d))),
                               run_day)
        added[d.isoformat()] = rows
        duplicates += dups
    removed = [d.isoformat() for d in partition_days(history) if d < oldest]
    for d in removed:
        shutil.rmtree(history / f"day={d}")
    days = partition_days(history)
    return {
        "days": len(days),
        "first_day": days[0].isoformat() if days else None,
        "last_day": days[-1].isoformat() if days else None,
        "rows": sum(partition_rows(history, d) for d in days),
        "added": sum(added.values()),
        "added_by_day": added,
        "duplicates_skipped": duplicates,
        "partitions_removed": removed,
    }


def archive_quarantine(source: Path, archive: Path, run_day: dt.date, keep_days: int) -> int:
    """Keep the run's quarantine beside the history (nothing fetched is ever lost); returns its
    rows. Archives older than keep_days go, like the history's partitions."""
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"date={run_day.isoformat()}.parquet"
    tmp = tmp_path(target)
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    oldest = (run_day - dt.timedelta(days=keep_days)).isoformat()
    for old in archive.glob("date=*.parquet"):
        if old.stem.removeprefix("date=") < oldest:
            old.unlink()
    return pq.ParquetFile(target).metadata.num_rows


def select_window(history: Path, run_day: dt.date, days: int, rejected: set[dt.date]
                  ) -> tuple[list[dt.date], list[dt.date]]:
    """The training window: (days used, days left out as rejected) among the partitions of the
    `days` days before run_day."""
    first = run_day - dt.timedelta(days=days)
    present = [d for d in partition_days(history) if first <= d < run_day]
    return [d for d in present if d not in rejected], [d for d in present if d in rejected]


def window_files(history: Path, days: list[dt.date]) -> list[Path]:
    """Every file of the given days, in day order (each day: its own file, then arrivals)."""
    return [p for d in days for p in partition_files(history, d)]
