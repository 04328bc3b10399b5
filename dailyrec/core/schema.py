"""The canonical event schema: the one contract between stages.

Every stage after fetch_delta reads and writes events in exactly this shape. Nothing else in the
project spells out these columns or their types; import them from here. How a source's values
become these (ids, event types, times) is fetch_delta's: dailyrec.ingest.normalise.

    event_id    string, not null   stable id: the source's own event id prefixed by the source, or a
                                   hash of (user_id, item_id, event_type, ts) when the source has none,
                                   so an exact duplicate gets the same id and deduplicates
    user_id     string, not null   canonical id text: trimmed, integral floats "123.0" -> "123"
    item_id     string, not null   same rules as user_id
    event_type  string, not null   one of EVENT_TYPES
    ts          timestamp[us, UTC] when the event happened (not when it was written)
    source      string, not null   the source table it came from
    user_agent  string, nullable
    ip          string, nullable
    quantity    float64, nullable  how much the event counts (play counts, quantities, watch
                                   seconds), from the column a table names; null means 1
                                   (dailyrec/model/confidence.py says how it scales the weight)
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("user_agent", pa.string(), nullable=True),
        pa.field("ip", pa.string(), nullable=True),
        pa.field("quantity", pa.float64(), nullable=True),
    ]
)
COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
REQUIRED: tuple[str, ...] = tuple(f.name for f in EVENT_SCHEMA if not f.nullable)

# Rows that cannot be used are kept here, never dropped: the raw values as text, which field failed,
# and why.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("field", pa.string()),
        pa.field("value", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


ID_MAX_LEN = 64
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,%d}$" % (ID_MAX_LEN - 1)
ID_REGEX = re.compile(ID_PATTERN)


def empty_events() -> pd.DataFrame:
    return to_frame(EVENT_SCHEMA.empty_table())


def empty_quarantine() -> pd.DataFrame:
    return QUARANTINE_SCHEMA.empty_table().to_pandas()


def to_table(events: pd.DataFrame) -> pa.Table:
    """Canonical DataFrame -> Arrow table with exactly EVENT_SCHEMA (raises if a required column
    is missing; a missing nullable one is all nulls)."""
    missing = [c for c in REQUIRED if c not in events.columns]
    if missing:
        raise ValueError(f"events are missing canonical columns {missing}")
    return pa.Table.from_arrays(
        [arrow_column(events[f.name], f.type) if f.name in events.columns
         else pa.nulls(len(events), f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def arrow_column(values: pd.Series, to: pa.DataType) -> pa.Array:
    """One pandas column as an Arrow array of type `to` (zoned times as the same instants)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        # pyarrow reads zoned pandas columns through Series.values, deprecated in pandas 3.1;
        # hand it the UTC wall times instead (the same instants).
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return pa.array(values.to_numpy() if values.dtype.kind == "M" else values.array, type=to,
                    from_pandas=True)


def to_frame(table: pa.Table) -> pd.DataFrame:
    return table.select(list(COLUMNS)).to_pandas()


def conform(table: pa.Table) -> pa.Table:
    """Check a table read from disk against the schema; cast compatible types, refuse others.
    A nullable column it lacks (files written before the column existed) is all nulls."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"not canonical events: missing columns {missing}")
    for f in EVENT_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table.select(list(COLUMNS)).cast(EVENT_SCHEMA)




MICROS_PER_DAY = 86_400_000_000  # a UTC day of ts


def ts_micro_chunks(table: pa.Table) -> list[np.ndarray]:
    """A table's canonical ts column as int64 microseconds since the epoch, a zero-copy view per
    chunk."""
    return [c.view(pa.int64()).to_numpy() for c in table.column("ts").chunks]


def ts_micros(table: pa.Table) -> np.ndarray:
    """A table's canonical ts column as int64 microseconds since the epoch: the chunks' views,
    one concatenation."""
    chunks = ts_micro_chunks(table)
    return np.concatenate(chunks) if chunks else np.empty(0, np.int64)


def time_order_cuts(table: pa.Table, bounds: list[int]) -> list[int] | None:
    """Where each bound (int64 microseconds) falls in a table whose ts column is in time order:
    the number of rows before it, as np.searchsorted on the whole column would say; None when the
    rows are not in time order. Chunk by chunk, on zero-copy views: no column-sized array."""
    chunks = [c for c in ts_micro_chunks(table) if len(c)]
    for a, b in zip(chunks, chunks[1:]):
        if b[0] < a[-1]:
            return None
    if not all(bool(np.all(c[1:] >= c[:-1])) for c in chunks):  # a chunk at a time: ~100k rows
        return None
    return [sum(int(np.searchsorted(c, bound)) for c in chunks) for bound in bounds]


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each text id (pandas' SipHash with its fixed key: the same on every run
    and machine): fetch_delta's duplicate check and validate's per-file facts key ids by it."""
    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(values, categorize=False)


