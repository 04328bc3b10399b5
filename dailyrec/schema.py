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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
    return pa.Table.from_arrays([arrow_column(events[f.name], f.type) for f in EVENT_SCHEMA],
                                schema=EVENT_SCHEMA)


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
    """Check a table read from disk against the schema; cast compatible types, refuse others."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"not canonical events: missing columns {missing}")
    return table.select(list(COLUMNS)).cast(EVENT_SCHEMA)


def canonical_ids(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Normalise ids of any source type into canonical text.

    Works on the distinct values only (ids repeat a lot), so the cost follows the number of distinct
    ids, not rows. Returns (ids, problem) where problem is "" for a good id, "missing" or "invalid"
    (a categorical: compare it with those strings).
    """
    ids = encode_ids(values)
    problem = pd.Series(pd.Categorical.from_codes(ids.problems(), categories=ID_PROBLEMS),
                        index=values.index)
    return _str_series(ids.take(), values.index), problem


ID_PROBLEMS = ("", "missing", "invalid")  # the codes of Encoded.problem


@dataclass(frozen=True)
class Encoded:
    """A column as its distinct canonical values and each row's position among them:
    values.take(slots) is the column. Callers that keep only some rows take once, at the end."""

    values: pa.Array  # canonical text of each distinct value, null where unusable, then one null
    slots: np.ndarray  # per row: its position in values (source nulls: the last one)
    problem: np.ndarray | None = None  # ids: per distinct value, an index into ID_PROBLEMS

    def take(self, rows: np.ndarray | None = None) -> pa.Array:
        return self.values.take(self.slots if rows is None else self.slots[rows])

    def problems(self) -> np.ndarray:
        """Per row: an index into ID_PROBLEMS."""
        return self.problem[self.slots]


def encode_ids(values: pd.Series) -> Encoded:
    """canonical_ids, encoded (see Encoded)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = _ids_as_text(pd.Series(uniques))
    folded = text.str.lower()
    missing = text.isna() | folded.isin(_NULL_TOKENS)
    valid = ~missing & text.str.fullmatch(_ID_PATTERN).fillna(False).astype(bool)
    problem = np.where(missing, 1, np.where(valid, 0, 2)).astype(np.int8)
    return Encoded(values=_with_null(pa.array(text.where(valid).array, type=pa.string())),
                   slots=_slots(codes, len(uniques)), problem=np.append(problem, np.int8(1)))


def _slots(codes: np.ndarray, n_uniques: int) -> np.ndarray:
    # pandas' null sentinel -1 -> the null appended after the distinct values.
    return np.where(codes < 0, n_uniques, codes)


def _with_null(distinct: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(distinct, pa.ChunkedArray):
        distinct = distinct.combine_chunks()
    return pa.concat_arrays([distinct, pa.nulls(1, distinct.type)])


def _str_series(array: pa.Array | pa.ChunkedArray, index: pd.Index) -> pd.Series:
    """Arrow strings -> a pandas "str" Series without a round trip through Python objects."""
    return pd.Series(array, index=index, dtype="str")


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
    return _str_series(encode_event_types(values, table_aliases).take(), values.index)


def encode_event_types(values: pd.Series, table_aliases: dict[str, str] | None = None
                       ) -> Encoded:
    """canonical_event_types, encoded (see Encoded)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    folded = (pd.Series(uniques, dtype="str").str.strip().str.lower()
              .str.replace(r"[\s\-]+", "_", regex=True))
    aliases = {**EVENT_TYPE_ALIASES, **{k.lower(): v for k, v in (table_aliases or {}).items()}}
    mapped = pa.array(folded.map(aliases).to_numpy(dtype=object), type=pa.string(),
                      from_pandas=True)
    return Encoded(values=_with_null(mapped), slots=_slots(codes, len(uniques)))


# Well-formed ISO 8601 date-times that Arrow's strict parser reads exactly as pandas does (Arrow
# refuses Feb 30, hour 24, second 60, offset +24:00 like pandas); anything else goes to pandas.
_ISO_ZONED = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d(:?\d\d)?)$"
_ISO_NAIVE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?$"
_EPOCH_TEXT = r"^-?\d+(\.\d+)?$"
NAT = np.iinfo(np.int64).min  # "no time" in timestamp_micros


def canonical_timestamps(values: pd.Series) -> pd.Series:
    """Parse event times of mixed forms into UTC: epoch seconds, epoch milliseconds (numbers or
    numeric text; told apart by magnitude), ISO 8601 strings with or without a zone (no zone
    means UTC), and native datetimes. Unparseable values become NaT."""
    return _micros_series(timestamp_micros(values), values.index)


def timestamp_micros(values: pd.Series) -> np.ndarray:
    """canonical_timestamps as int64 microseconds since the epoch, NAT (int64 min) for none."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return pd.DatetimeIndex(values.astype("datetime64[us]")).asi8
    if pd.api.types.is_numeric_dtype(values.dtype):
        return _epoch_micros(values.to_numpy(dtype="float64", na_value=np.nan))
    text = trimmed_text(values)
    micros = np.full(len(text), NAT, dtype=np.int64)
    # The common forms go through Arrow's vectorised parsers; each step sees only the rows the
    # ones before it left, so a clean column costs one regex and one cast.
    rows = np.flatnonzero(np.asarray(text.is_valid()))
    rest = text if len(rows) == len(text) else text.take(pa.array(rows))
    for pattern, parse in ((_ISO_ZONED, _parse_iso_zoned), (_EPOCH_TEXT, _parse_epoch_text),
                           (_ISO_NAIVE, _parse_iso_naive), (None, _parse_iso_pandas)):
        if not len(rows):
            break
        if pattern is None:
            micros[rows] = parse(rest)
            break
        match = pc.match_substring_regex(rest, pattern)
        if not pc.any(match).as_py():
            continue
        # Parse the matches in place (the others masked to null, so no copy of the column);
        # only the few rows left over are taken out for the next form.
        parsed = parse(pc.if_else(match, rest, pa.scalar(None, rest.type)))
        match = np.asarray(match)
        micros[rows[match]] = parsed[match]
        left = np.flatnonzero(~match)
        rows, rest = rows[left], rest.take(pa.array(left))
    return micros


def trimmed_text(values: pd.Series) -> pa.Array:
    """Any source column as Arrow text with surrounding whitespace removed (nulls stay null)."""
    text = values if values.dtype == "str" else values.astype("str")
    arrow = pa.array(text.array)
    arrow = arrow.combine_chunks() if isinstance(arrow, pa.ChunkedArray) else arrow
    arrow = arrow.cast(pa.large_string())
    # Trimming copies every string (user agents are long); most columns need none.
    return pc.utf8_trim_whitespace(arrow) if _may_need_trim(arrow) else arrow


# Bytes that may start or end whitespace: ASCII controls and space, and any byte of a multi-byte
# character (some are Unicode spaces). A string edged by none of them needs no trim.
_EDGE_BYTES = np.zeros(256, dtype=bool)
_EDGE_BYTES[:0x21] = True
_EDGE_BYTES[0x80:] = True


def _may_need_trim(text: pa.LargeStringArray) -> bool:
    """Whether any string starts or ends with a possible whitespace byte: a look at two bytes
    per string in Arrow's buffers, instead of a trimmed copy of the column."""
    _, offsets, data = text.buffers()
    if data is None or len(text) == 0:
        return False
    offsets = np.frombuffer(offsets, dtype=np.int64)[text.offset:text.offset + len(text) + 1]
    starts, ends = offsets[:-1], offsets[1:]
    filled = ends > starts
    data = np.frombuffer(data, dtype=np.uint8)
    first, last = data[starts[filled]], data[ends[filled] - 1]
    return bool(_EDGE_BYTES[first].any() or _EDGE_BYTES[last].any())


def _parse_iso_zoned(text: pa.Array) -> np.ndarray:
    return _cast_micros(text, pa.timestamp("us", tz="UTC"))


def _parse_iso_naive(text: pa.Array) -> np.ndarray:
    return _cast_micros(text, pa.timestamp("us"))  # no zone: UTC


def _cast_micros(text: pa.Array, to: pa.DataType) -> np.ndarray:
    """Arrow's strict ISO cast; it refuses a whole array for one impossible date (2026-02-30),
    so on refusal split in halves and let pandas decide the few small pieces that hold one."""
    try:
        return _arrow_micros(pc.cast(text, to))
    except pa.ArrowInvalid:
        if len(text) <= 256:
            return _parse_iso_pandas(text)
        half = len(text) // 2
        return np.concatenate([_cast_micros(text.slice(0, half), to),
                               _cast_micros(text.slice(half), to)])


def _parse_epoch_text(text: pa.Array) -> np.ndarray:
    return _epoch_micros(np.asarray(pc.cast(text, pa.float64())))


def _parse_iso_pandas(text: pa.Array) -> np.ndarray:
    parsed = pd.to_datetime(pd.Series(text, dtype="str"), format="ISO8601", utc=True,
                            errors="coerce").astype("datetime64[us, UTC]")
    return pd.DatetimeIndex(parsed).asi8


def _arrow_micros(stamps: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(stamps.cast(pa.int64()), NAT))


def _micros_series(micros: np.ndarray, index: pd.Index) -> pd.Series:
    """int64 microseconds since the epoch (NAT for none) -> datetime64[us, UTC] Series."""
    stamps = pd.DatetimeIndex(micros.view("datetime64[us]")).tz_localize("UTC")
    return pd.Series(stamps, index=index)


def _epoch_micros(numbers: np.ndarray) -> np.ndarray:
    # Epoch seconds stay below 1e11 until the year 5138; epoch milliseconds are above it after 1973.
    with np.errstate(invalid="ignore", over="ignore"):
        micros = np.where(np.abs(numbers) >= 1e11, numbers * 1_000, numbers * 1_000_000)
        usable = np.isfinite(micros) & (np.abs(micros) < 2**62)
        return np.where(usable, np.round(np.where(usable, micros, 0)), NAT).astype(np.int64)


def derive_event_ids(events: pd.DataFrame) -> pd.Series:
    """Content hash of (user_id, item_id, event_type, ts): an exact duplicate gets the same id."""
    key = events[["user_id", "item_id", "event_type"]].copy()
    key["ts"] = events["ts"].astype("int64")
    hashed = pd.util.hash_pandas_object(key, index=False).to_numpy()
    return _str_series(_hex_ids(hashed, prefix=b"h"), events.index)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_ids(hashed: np.ndarray, prefix: bytes) -> pa.Array:
    """uint64 -> prefix + 16 lower-case hex digits (as "h%016x"), built as one Arrow buffer."""
    width = len(prefix) + 16
    digits = np.ascontiguousarray(hashed, dtype=np.uint64).astype(">u8").view(np.uint8)
    digits = digits.reshape(-1, 8)
    chars = np.empty((len(hashed), width), dtype=np.uint8)
    chars[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    chars[:, len(prefix)::2] = _HEX_DIGITS[digits >> 4]
    chars[:, len(prefix) + 1::2] = _HEX_DIGITS[digits & 0x0F]
    offsets = np.arange(0, width * (len(hashed) + 1), width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(len(hashed), pa.py_buffer(offsets),
                                            pa.py_buffer(chars))
