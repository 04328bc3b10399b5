"""The canonical event schema: the one contract between stages.

Every stage after fetch_delta reads and writes events in exactly this shape. Nothing else in the
project spells out these columns or their types; import them from here.

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
    ]
)
COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
REQUIRED: tuple[str, ...] = tuple(f.name for f in EVENT_SCHEMA if not f.nullable)
# Columns a source table provides (event_id is optional: derived when absent; source is the table name).
SOURCE_FIELDS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "ts", "user_agent", "ip")

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

# Names a source may use for a canonical field, compared after lower-casing and removing "_", "-"
# and spaces (so userId, user_id and UserID all read "userid"). A per-table mapping in params.yaml
# wins over these.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "event_id": ("eventid", "eventuuid", "uuid", "id", "eventkey"),
    "user_id": ("userid", "user", "uid", "customerid", "visitorid", "accountid"),
    "item_id": ("itemid", "item", "productid", "product", "sku", "contentid", "iid"),
    "event_type": ("eventtype", "event", "eventname", "action", "type", "interaction"),
    "ts": ("ts", "timestamp", "eventtime", "eventts", "time", "occurredat", "eventtimems",
           "eventtimestamp", "datetime", "createdat"),
    "user_agent": ("useragent", "ua", "deviceua", "agent", "browseragent"),
    "ip": ("ip", "ipaddress", "clientip", "remoteaddr", "remoteip"),
}

# Spellings of the event types seen in sources, after lower-casing and mapping "-" and " " to "_".
EVENT_TYPE_ALIASES: dict[str, str] = {
    "view": "view", "views": "view", "page_view": "view", "pageview": "view", "viewed": "view",
    "impression_view": "view", "detail_view": "view", "product_view": "view",
    "click": "click", "clicks": "click", "clicked": "click", "tap": "click",
    "add_to_cart": "add_to_cart", "addtocart": "add_to_cart", "cart_add": "add_to_cart",
    "add_cart": "add_to_cart", "cart": "add_to_cart", "basket_add": "add_to_cart",
    "added_to_cart": "add_to_cart",
    "purchase": "purchase", "purchased": "purchase", "buy": "purchase", "order": "purchase",
    "checkout": "purchase", "transaction": "purchase",
}

ID_MAX_LEN = 64
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,%d}$" % (ID_MAX_LEN - 1)
ID_REGEX = re.compile(_ID_PATTERN)
_NULL_TOKENS = ("", "null", "none", "nan", "n/a", "na", "undefined", "nil", "-")


def fold_name(name: str) -> str:
    """Column-name key used for alias matching: 'UserID', 'user_id', 'user-id' -> 'userid'."""
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def empty_events() -> pd.DataFrame:
    return to_frame(EVENT_SCHEMA.empty_table())


def empty_quarantine() -> pd.DataFrame:
    return QUARANTINE_SCHEMA.empty_table().to_pandas()


def to_table(events: pd.DataFrame) -> pa.Table:
    """Canonical DataFrame -> Arrow table with exactly EVENT_SCHEMA (raises if a column is off)."""
    missing = [c for c in COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events are missing canonical columns {missing}")
    return pa.Table.from_pandas(events[list(COLUMNS)], schema=EVENT_SCHEMA, preserve_index=False)


def to_frame(table: pa.Table) -> pd.DataFrame:
    return table.select(list(COLUMNS)).to_pandas()


def conform(table: pa.Table) -> pa.Table:
    """Check a table read from disk against the schema; cast compatible types, refuse others."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"not canonical events: missing columns {missing}")
    return table.select(list(COLUMNS)).cast(EVENT_SCHEMA)


def canonical_ids(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Normalise ids of any source type into canonical text.

    Works on the distinct values only (ids repeat a lot), so the cost follows the number of distinct
    ids, not rows. Returns (ids, problem) where problem is "" for a good id, "missing" or "invalid".
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = _ids_as_text(pd.Series(uniques))
    folded = text.str.lower()
    missing = text.isna() | folded.isin(_NULL_TOKENS)
    valid = ~missing & text.str.fullmatch(_ID_PATTERN).fillna(False).astype(bool)
    problem_u = np.where(missing, "missing", np.where(valid, "", "invalid"))
    ids_u = text.where(valid)
    # Sentinel -1 (a null in the source) -> "missing".
    ids = pd.Series(np.append(ids_u.to_numpy(dtype=object), None)[codes], index=values.index,
                    dtype="str")
    problem = pd.Series(np.append(problem_u, "missing")[codes], index=values.index)
    return ids, problem


def _ids_as_text(uniques: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(uniques.dtype):
        integral = uniques.notna() & (uniques == np.floor(uniques)) & (uniques.abs() < 2**53)
        out = uniques.astype(object).astype(str).where(uniques.notna())
        out[integral] = uniques[integral].astype("int64").astype(str)
        return out.astype("str")
    if pd.api.types.is_integer_dtype(uniques.dtype):
        return uniques.astype(str).astype("str")
    text = uniques.astype("str").str.strip()
    # "123.0", "123.00" -> "123": floats written as text by some producer.
    return text.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)


def canonical_event_types(values: pd.Series, table_aliases: dict[str, str] | None = None
                          ) -> pd.Series:
    """Map source spellings to EVENT_TYPES; unknown spellings become NA. Works on distinct values."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    folded = (pd.Series(uniques, dtype="str").str.strip().str.lower()
              .str.replace(r"[\s\-]+", "_", regex=True))
    aliases = {**EVENT_TYPE_ALIASES, **{k.lower(): v for k, v in (table_aliases or {}).items()}}
    mapped = folded.map(aliases).to_numpy(dtype=object)
    return pd.Series(np.append(mapped, None)[codes], index=values.index, dtype="str")


def canonical_timestamps(values: pd.Series) -> pd.Series:
    """Parse event times of mixed forms into UTC: epoch seconds, epoch milliseconds (numbers or
    numeric text; told apart by magnitude), ISO 8601 strings with or without a zone (no zone
    means UTC), and native datetimes. Unparseable values become NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype("datetime64[us, UTC]")
    if pd.api.types.is_numeric_dtype(values.dtype):
        return _from_epoch(values.astype("float64"))
    text = values.astype("str").str.strip()
    numeric = pd.to_numeric(text.where(text.str.fullmatch(r"-?\d+(\.\d+)?").fillna(False)),
                            errors="coerce")
    out = _from_epoch(numeric)
    iso = numeric.isna() & text.notna()
    if iso.any():
        out[iso] = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce"
                                  ).astype("datetime64[us, UTC]")
    return out


def _from_epoch(numbers: pd.Series) -> pd.Series:
    # Epoch seconds stay below 1e11 until the year 5138; epoch milliseconds are above it after 1973.
    micros = np.where(numbers.abs() >= 1e11, numbers * 1_000, numbers * 1_000_000)
    micros = np.where(np.isfinite(micros) & (np.abs(micros) < 2**62), micros, np.nan)
    out = pd.Series(pd.array(micros, dtype="Float64").round().astype("Int64"), index=numbers.index)
    return pd.to_datetime(out, unit="us", utc=True).astype("datetime64[us, UTC]")


def derive_event_ids(events: pd.DataFrame) -> pd.Series:
    """Content hash of (user_id, item_id, event_type, ts): an exact duplicate gets the same id."""
    key = events[["user_id", "item_id", "event_type"]].copy()
    key["ts"] = events["ts"].astype("int64")
    hashed = pd.util.hash_pandas_object(key, index=False).to_numpy()
    return pd.Series(np.char.mod("h%016x", hashed), index=events.index, dtype="str")
