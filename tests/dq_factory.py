"""Tiny canonical event batches for the validate and filter_noise tests (no simulator needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dailyrec.core import schema as S

from dailyrec.ingest import normalise as N
from dailyrec.ingest.history import partition_path
from tests.params import project_params

ROOT = Path(__file__).resolve().parents[1]
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def default_params(run_date: str = "2026-11-21") -> dict:
    """The repository's params.yaml (the default settings) for a given run.date."""
    return project_params(run_date)


def day_events(day: dt.date, n: int = 400, seed: int = 0, users: int = 50, items: int = 100,
               prefix: str = "") -> pd.DataFrame:
    """n ordinary events spread over one day, the last one a few seconds before midnight."""
    rng = np.random.default_rng([seed, day.toordinal()])
    start = pd.Timestamp(day, tz="UTC")
    seconds = np.sort(rng.integers(0, 86_390, n))
    seconds[-1] = 86_395
    return events(
        user_id=rng.integers(1, users + 1, n).astype(str),
        item_id=rng.integers(1, items + 1, n).astype(str),
        event_type=rng.choice(S.EVENT_TYPES, n, p=[0.7, 0.2, 0.07, 0.03]),
        ts=start + pd.to_timedelta(seconds, unit="s"),
        event_id=[f"web_events:{prefix}{day:%Y%m%d}{k:06d}" for k in range(n)],
    )


def events(user_id, item_id, ts, event_type="view", event_id=None, user_agent=BROWSER,
           ip="81.2.69.160", source="web_events") -> pd.DataFrame:
    """A canonical frame from columns (scalars broadcast)."""
    frame = pd.DataFrame({"user_id": user_id, "item_id": item_id, "ts": ts})
    frame["event_type"] = event_type
    frame["source"] = source
    frame["user_agent"] = user_agent
    frame["ip"] = ip
    frame["quantity"] = np.nan
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    if event_id is None:
        frame["event_id"] = N.derive_event_ids(frame.astype({"user_id": "str", "item_id": "str",
                                                             "event_type": "str"}))
    else:
        frame["event_id"] = event_id
    frame = frame[list(S.COLUMNS)]
    for col in ("event_id", "user_id", "item_id", "event_type", "source", "user_agent", "ip"):
        frame[col] = frame[col].astype("str")
    return frame.reset_index(drop=True)


def write_history(history: Path, frame: pd.DataFrame) -> None:
    """Write events into day partitions, sorted like merge_history does."""
    days = frame["ts"].dt.floor("D").dt.date
    for day in sorted(days.unique()):  # a few days
        part = frame[days == day].sort_values(["ts", "event_id"], kind="stable")
        path = partition_path(history, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_arrow(part), path)


def to_arrow(frame: pd.DataFrame, schema=None):
    """A canonical frame -> Arrow, column by column (pa.Table.from_pandas warns under pandas 3
    about tz-aware columns)."""
    import pyarrow as pa

    schema = schema or S.EVENT_SCHEMA
    arrays = []
    for f in schema:
        col = frame[f.name]
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            micros = col.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
            arrays.append(pa.array(micros.to_numpy(), pa.timestamp("us")).cast(f.type))
        else:
            arrays.append(pa.array(col.to_numpy(dtype=object), from_pandas=True).cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_delta(directory: Path, frame: pd.DataFrame, quarantined_reasons=()) -> None:
    """data/delta/events.parquet as written (no conform, so tests can break types) and the
    quarantine file with the given reasons."""
    import pyarrow as pa

    directory.mkdir(parents=True, exist_ok=True)
    try:
        table = to_arrow(frame)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError):  # a deliberately broken frame
        table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, directory / "events.parquet")
    reasons = list(quarantined_reasons)
    q = pd.DataFrame({"source": "web_events", "reason": reasons,
                      "field": [r.split(":")[0] for r in reasons], "value": "x", "raw": "{}"})
    pq.write_table(to_arrow(q, S.QUARANTINE_SCHEMA), directory / "quarantine.parquet")
