"""A source's values as canonical event fields (fetch_delta's work): column names matched by alias,
ids trimmed to their canonical text, event types mapped to the vocabulary, times of every
spelling to microseconds since the epoch in UTC, and event ids derived for tables that have
none. The fields themselves are defined in dailyrec.core.schema.

Everything works on the distinct values of a column (dictionary codes), never row by row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dailyrec.core.schema import ID_PATTERN


# Columns a source table provides (event_id is optional: derived when absent; source is the table name).
SOURCE_FIELDS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "ts", "user_agent",
                                  "ip", "quantity")


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
    "quantity": ("quantity",),  # opt-in: a table maps its plays, watch seconds... column by name
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


_NULL_TOKENS = ("", "null", "none", "nan", "n/a", "na", "undefined", "nil", "-")


def fold_name(name: str) -> str:
    """Column-name key used for alias matching: 'UserID', 'user_id', 'user-id' -> 'userid'."""
    return re.sub(r"[\s_\-]", "", str(name)).lower()


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
    # event types: per distinct value, its folded spelling and whether the table ignores it
    names: np.ndarray | None = None
    ignored: np.ndarray | None = None

    def take(self, rows: np.ndarray | None = None) -> pa.Array:
        return self.values.take(self.slots if rows is None else self.slots[rows])

    def problems(self) -> np.ndarray:
        """Per row: an index into ID_PROBLEMS."""
        return self.problem[self.slots]


def encode_ids(values: pd.Series, distinct: bool = True) -> Encoded:
    """canonical_ids, encoded (see Encoded). distinct=False for a column whose values are
    (nearly) all different, such as a source's own event ids: factorising would save nothing."""
    if not distinct:
        text = _id_text(values)
        slots = np.arange(len(values))
        checked = _check_ids(pa.concat_arrays([text, pa.nulls(1, text.type)]))
        return Encoded(values=checked[0], slots=slots, problem=checked[1])
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    values_, problem = _check_ids(_with_null(_id_text(pd.Series(uniques))))
    return Encoded(values=values_, slots=_slots(codes, len(uniques)), problem=problem)


_NULL_TOKEN_SET = pa.array(list(_NULL_TOKENS), pa.large_string())


def _check_ids(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the canonical text, null where unusable; per value, an index into ID_PROBLEMS), with
    Arrow's vectorised kernels (RE2 for the format)."""
    missing = np.asarray(pc.fill_null(pc.is_in(pc.utf8_lower(text), value_set=_NULL_TOKEN_SET),
                                      True)) | np.asarray(text.is_null())
    valid = np.asarray(pc.fill_null(pc.match_substring_regex(text, ID_PATTERN), False)) & ~missing
    problem = np.where(missing, 1, np.where(valid, 0, 2)).astype(np.int8)
    return pc.if_else(pa.array(valid), text, pa.scalar(None, text.type)).cast(pa.string()), problem


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


def _id_text(values: pd.Series) -> pa.Array:
    """Ids of any source type as Arrow text: integers exactly, integral floats without ".0",
    text trimmed and "123.0" (a float written as text) read as "123"."""
    if pd.api.types.is_float_dtype(values.dtype):
        integral = values.notna() & (values == np.floor(values)) & (values.abs() < 2**53)
        out = values.astype(object).astype(str).where(values.notna())
        out[integral] = values[integral].astype("int64").astype(str)
        return pa.array(out.to_numpy(dtype=object), type=pa.large_string(), from_pandas=True)
    if pd.api.types.is_integer_dtype(values.dtype):
        return pa.array(values.to_numpy()).cast(pa.large_string())
    text = trimmed_text(values)
    float_text = r"^(\d+)\.0+$"
    if pc.any(pc.match_substring_regex(text, float_text)).as_py():
        text = pc.replace_substring_regex(text, float_text, r"\1")
    return text


def canonical_event_types(values: pd.Series, table_aliases: dict[str, str] | None = None
                          ) -> pd.Series:
    """Map source spellings to EVENT_TYPES; unknown spellings become NA. Works on distinct values."""
    return _str_series(encode_event_types(values, table_aliases).take(), values.index)


def fold_event_type(name: str) -> str:
    """The key event-type spellings are compared by: 'Add To Basket', 'add-to-basket' and
    'add_to_basket' all read 'add_to_basket'."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def encode_event_types(values: pd.Series, table_aliases: dict[str, str] | None = None,
                       ignore: tuple[str, ...] = ()) -> Encoded:
    """canonical_event_types, encoded (see Encoded). A table's own spellings and the types it
    ignores are folded like the built-in ones; `ignored` marks the distinct values to ignore."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    folded = (pd.Series(uniques, dtype="str").str.strip().str.lower()
              .str.replace(r"[\s\-]+", "_", regex=True))
    aliases = {**EVENT_TYPE_ALIASES,
               **{fold_event_type(k): v for k, v in (table_aliases or {}).items()}}
    mapped = pa.array(folded.map(aliases).to_numpy(dtype=object), type=pa.string(),
                      from_pandas=True)
    ignored = folded.isin({fold_event_type(t) for t in ignore}).to_numpy(dtype=bool)
    return Encoded(values=_with_null(mapped), slots=_slots(codes, len(uniques)),
                   names=np.append(folded.to_numpy(dtype=object), None),
                   ignored=np.append(ignored, False))


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
