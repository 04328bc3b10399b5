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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.core.files import tmp_path

PARTITION_FILE = "events.parquet"
ARRIVED_PREFIX = "arrived-"


def partition_path(history: Path, day: dt.date) -> Path:
    """The day's own file, written by the run for the day after it."""
    return history / f"day={day.isoformat()}" / PARTITION_FILE


def partition_day(path: Path) -> dt.date:
    """The day a history file belongs to: its folder's day=YYYY-MM-DD."""
    return dt.date.fromisoformat(path.parent.name.removeprefix("day="))


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


def run_files(history: Path, run_day: dt.date) -> list[Path]:
    """Every file the run for run_day wrote: the own file of the day before it, and its arrivals
    (late events, lookback re-reads, clock-skewed events) in any day."""
    own = partition_path(history, run_day - dt.timedelta(days=1))
    return ([own] if own.exists() else []) + \
        sorted(history.glob(f"day=*/{ARRIVED_PREFIX}{run_day.isoformat()}.parquet"))


def _target(history: Path, day: dt.date, run_day: dt.date) -> Path:
    """Where the run for run_day writes events of `day`: the day's own file when it is the day's
    own run, else arrived-<run_day>.parquet beside it."""
    if run_day == day + dt.timedelta(days=1):
        return partition_path(history, day)
    return history / f"day={day.isoformat()}" / f"{ARRIVED_PREFIX}{run_day.isoformat()}.parquet"


def check_removal(history: Path, run_day: dt.date, keep_days: int, max_share: float) -> None:
    """Refuse, before anything changes, a run that would age out more than max_share of the
    history's events: a run.date far ahead or a history.days cut short would otherwise delete
    the data that DVC then records as the history, and a later `dvc gc` collects for good."""
    oldest = run_day - dt.timedelta(days=keep_days)
    days = partition_days(history)
    rows = {d: partition_rows(history, d) for d in days}
    total = sum(rows.values())
    going = [d for d in days if d < oldest]
    removed = sum(rows[d] for d in going)
    if total and removed / total > max_share:
        raise ConfigError(
            f"merge_history: run.date {run_day} with history.days {keep_days} would remove "
            f"{len(going)} of {len(days)} history days ({going[0]}..{going[-1]}: {removed:,} of "
            f"{total:,} events, {removed / total:.0%}), more than history.max_removed_share "
            f"({max_share:g}); nothing was changed. If that is meant, raise "
            "history.max_removed_share for this one run.")


def merge(delta: Path, history: Path, run_day: dt.date, keep_days: int, dedupe_days: int = 0
          ) -> tuple[dict, pa.Table]:
    """Merge the delta's events into their days' partitions and drop partitions older than
    keep_days before run_day. Returns the counts (the stage writes them as metrics) and the
    re-sent events (quarantined beside the run's other quarantined rows).

    - A re-run replaces what the same run wrote before (a day re-fetched after the source was
      fixed must not keep the rejected rows): the run's files go first, then it writes anew.
    - An event whose id is already in another run's file of the same day is a duplicate (a
      lookback re-read): skipped, counted.
    - An event whose id is already in a file of another day up to dedupe_days before the delta's
      first day was re-sent (a producer's retry with a new timestamp): the first copy stays, the
      re-send is quarantined as event_id:resent.
    Files written by other runs are never touched, so `dvc push` sends only this run's files."""
    oldest = run_day - dt.timedelta(days=keep_days)
    replaced = 0
    for path in run_files(history, run_day):
        replaced += pq.ParquetFile(path).metadata.num_rows
        path.unlink()
    events = S.conform(pq.read_table(delta))
    event_day = pc.cast(pc.floor_temporal(events["ts"], unit="day"), pa.date32())
    keep = pc.greater_equal(event_day, pa.scalar(oldest))  # older: fetch quarantined them
    events, event_day = events.filter(keep), event_day.filter(keep)
    known = _known_ids(history, event_day, dedupe_days)
    position = pc.index_in(events["event_id"], value_set=known["event_id"])
    found = np.asarray(position.is_valid())
    known_day = np.asarray(known["day"].take(pc.fill_null(position, 0)).cast(pa.int32())) \
        if len(known) else np.zeros(len(events), dtype=np.int32)
    own_day = np.asarray(event_day.cast(pa.int32()))
    duplicate = found & (known_day == own_day)
    resent = found & (known_day != own_day)
    fresh = events.filter(pa.array(~found))
    fresh_day = event_day.filter(pa.array(~found))
    added: dict[str, int] = {}
    for d in pc.unique(fresh_day).to_pylist():  # a loop over days, not rows
        rows = fresh.filter(pc.equal(fresh_day, pa.scalar(d))).to_pandas()
        rows = rows.drop_duplicates("event_id", keep="first").sort_values(["ts", "event_id"],
                                                                         kind="stable")
        target = _target(history, d, run_day)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path(target)
        pq.write_table(S.to_table(rows), tmp)
        tmp.replace(target)
        added[d.isoformat()] = len(rows)
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
        "duplicates_skipped": int(duplicate.sum()),
        "resent": int(resent.sum()),
        "replaced": replaced,
        "partitions_removed": removed,
    }, events.filter(pa.array(resent))


def _known_ids(history: Path, event_day: pa.Array, dedupe_days: int) -> pa.Table:
    """event_id and day of every event already in the partitions of the delta's days and the
    dedupe_days before them (the event_id column only: a few MB a day)."""
    if len(event_day) == 0:
        return pa.table({"event_id": pa.array([], pa.string()), "day": pa.array([], pa.date32())})
    first = pc.min(event_day).as_py() - dt.timedelta(days=dedupe_days)
    last = pc.max(event_day).as_py()
    tables = []
    for d in partition_days(history):
        if first <= d <= last:
            for path in partition_files(history, d):
                ids = pq.read_table(path, columns=["event_id"])
                tables.append(ids.append_column("day", pa.repeat(pa.scalar(d, pa.date32()),
                                                                 ids.num_rows)))
    if not tables:
        return pa.table({"event_id": pa.array([], pa.string()), "day": pa.array([], pa.date32())})
    return pa.concat_tables(tables).combine_chunks()


def resent_rows(resent: pa.Table) -> pd.DataFrame:
    """Quarantine rows (dailyrec.core.schema.QUARANTINE_SCHEMA) for re-sent events."""
    if resent.num_rows == 0:
        return S.empty_quarantine()
    frame = S.to_frame(resent)
    raw = frame.to_json(orient="records", lines=True, date_format="iso", default_handler=str)
    return pd.DataFrame({"source": frame["source"].to_numpy(dtype=object),
                         "reason": "event_id:resent", "field": "event_id",
                         "value": frame["event_id"].to_numpy(dtype=object),
                         "raw": raw.splitlines()})


def archive_quarantine(source: Path, archive: Path, run_day: dt.date, keep_days: int,
                       more: pd.DataFrame | None = None) -> int:
    """Keep the run's quarantine (fetch's, and `more`: merge's re-sent events) beside the
    history, so nothing fetched is ever lost; returns its rows. Archives older than keep_days go,
    like the history's partitions."""
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"date={run_day.isoformat()}.parquet"
    tmp = tmp_path(target)
    if more is None or more.empty:
        shutil.copyfile(source, tmp)
    else:
        fetched = pq.read_table(source)
        extra = pa.Table.from_pandas(more, schema=S.QUARANTINE_SCHEMA, preserve_index=False)
        pq.write_table(pa.concat_tables([fetched.cast(S.QUARANTINE_SCHEMA), extra]), tmp)
    tmp.replace(target)
    oldest = (run_day - dt.timedelta(days=keep_days)).isoformat()
    for old in archive.glob("date=*.parquet"):
        if old.stem.removeprefix("date=") < oldest:
            old.unlink()
    return pq.ParquetFile(target).metadata.num_rows


@dataclass(frozen=True)
class Selection:
    """The training window's files: what the runs that were not rejected wrote."""

    files: list[Path]
    days: list[dt.date]  # days with at least one file used
    left_out: list[dt.date]  # rejected days in the window (their run's files are left out)


def select_window(history: Path, run_day: dt.date, days: int, rejected: set[dt.date]
                  ) -> Selection:
    """The `days` days before run_day, less everything a rejected run wrote. Day D is rejected
    when the run for D+1 failed validation: its own file of D, and its arrivals in any day (late
    events of older days, clock-skewed events of D+1) stay out until the day is admitted; other
    runs' arrivals into D stay in (their own runs validated them)."""
    first = run_day - dt.timedelta(days=days)
    present = [d for d in partition_days(history) if first <= d < run_day]
    excluded = {p for d in rejected for p in run_files(history, d + dt.timedelta(days=1))}
    files = [p for d in present for p in partition_files(history, d) if p not in excluded]
    used = sorted({partition_day(p) for p in files})
    return Selection(files=files, days=used, left_out=[d for d in present if d in rejected])


def day_rows(files: list[Path]) -> dict[dt.date, int]:
    """Events per day of the given history files, from the Parquet footers only."""
    rows: dict[dt.date, int] = {}
    for path in files:
        day = partition_day(path)
        rows[day] = rows.get(day, 0) + pq.ParquetFile(path).metadata.num_rows
    return rows
