"""The canonical schema and the normalisation of every messy form a source sends.

Pure functions on small frames (no database): ids, timestamps, event types, column aliases, the
per-table config (hostile names refused before any SQL is built) and normalise's quarantine.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dailyrec.core import schema as S

from dailyrec.ingest import normalise as N
from dailyrec.core import settings
from dailyrec.ingest import database as DB
from dailyrec.ingest import source as F
from dailyrec.core.errors import ConfigError
from dailyrec.ingest import settings as ingest
from dailyrec.ingest import tables as table_settings
from tests.mini_source import fetch
from tests.params import of

UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parents[1]


def utc(*args) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(*args, tzinfo=UTC))


def as_list(series: pd.Series) -> list:
    """Values with every kind of missing (None, NaN, NA, NaT) as None, for plain comparisons."""
    return [None if pd.isna(v) else v for v in series.tolist()]


# --- ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    (pd.Series([7, 42, 1234567890123]), ["7", "42", "1234567890123"]),
    (pd.Series([7, None, 42], dtype="Int64"), ["7", None, "42"]),
    (pd.Series([7.0, 42.0, np.nan]), ["7", "42", None]),
    (pd.Series(["123.0", "123.00", "0042", "abc-9", "sku_1.2:x@y"]),
     ["123", "123", "0042", "abc-9", "sku_1.2:x@y"]),
    (pd.Series(["  17 ", "\t18\n", " 19.0 "]), ["17", "18", "19"]),
    (pd.Series([5, "6", 7.0, " 8 ", "9.0"], dtype=object), ["5", "6", "7", "8", "9"]),
])
def test_ids_of_every_source_type_become_the_same_canonical_text(values, expected):
    ids, problem = N.canonical_ids(values)
    assert as_list(ids) == expected
    assert ids.dtype == "str"
    assert list(ids.index) == list(values.index)
    assert [p for p, e in zip(problem, expected) if e is not None] == [""] * sum(
        e is not None for e in expected)


def test_the_same_id_written_three_ways_is_one_id():
    ids, _ = N.canonical_ids(pd.Series([123, "123", "123.0", 123.0, " 123 "], dtype=object))
    assert set(ids) == {"123"}


@pytest.mark.parametrize("raw, problem", [
    (None, "missing"), (np.nan, "missing"), ("", "missing"), ("   ", "missing"),
    ("NULL", "missing"), ("null", "missing"), ("None", "missing"), ("undefined", "missing"),
    ("NaN", "missing"), ("n/a", "missing"), ("-", "missing"),
    ("user 12", "invalid"), ("<script>alert(1)</script>", "invalid"), ("-1' OR '1'='1", "invalid"),
    ("-1", "invalid"), ("_x", "invalid"), ("x" * 65, "invalid"), ("1e+20", "invalid"),
])
def test_unusable_ids_are_flagged_missing_or_invalid(raw, problem):
    ids, problems = N.canonical_ids(pd.Series(["ok-1", raw, "ok-2"], dtype=object))
    assert as_list(ids) == ["ok-1", None, "ok-2"]
    assert list(problems) == ["", problem, ""]


def test_numeric_garbage_ids_are_invalid():
    ids, problems = N.canonical_ids(pd.Series([5, -1], dtype="Int64"))
    assert as_list(ids) == ["5", None]
    assert list(problems) == ["", "invalid"]
    ids, problems = N.canonical_ids(pd.Series([2.5, 1e20, 3.0]))
    assert as_list(ids) == ["2.5", None, "3"]  # a fractional id keeps its text; 1e20 is not an id
    assert list(problems) == ["", "invalid", ""]


def test_longest_allowed_id_is_kept():
    ids, problems = N.canonical_ids(pd.Series(["x" * S.ID_MAX_LEN]))
    assert as_list(ids) == ["x" * S.ID_MAX_LEN] and list(problems) == [""]


# --- timestamps --------------------------------------------------------------------------------

NOON = utc(2026, 11, 15, 12, 0, 0)
NOON_S = int(NOON.timestamp())


@pytest.mark.parametrize("values, expected", [
    # epoch seconds and milliseconds, as numbers (told apart by magnitude)
    (pd.Series([NOON_S, NOON_S * 1000 + 250]), [NOON, NOON + pd.Timedelta(milliseconds=250)]),
    (pd.Series([NOON_S, None], dtype="Int64"), [NOON, None]),
    (pd.Series([NOON_S + 0.5, float(NOON_S * 1000), np.nan]),
     [NOON + pd.Timedelta(milliseconds=500), NOON, None]),
    # ... and as text
    (pd.Series([str(NOON_S), str(NOON_S * 1000), f" {NOON_S} ", f"{NOON_S}.25"]),
     [NOON, NOON, NOON, NOON + pd.Timedelta(milliseconds=250)]),
    # ISO 8601 with zones: Z, +hh:mm (India is +05:30), -hh:mm, +hhmm, +hh
    (pd.Series(["2026-11-15T12:00:00Z", "2026-11-15T17:30:00+05:30", "2026-11-15T07:00:00-05:00",
                "2026-11-15T13:00:00+0100", "2026-11-15T21:00:00+09",
                "2026-11-15T12:00:00.123456+00:00"]),
     [NOON] * 5 + [NOON + pd.Timedelta(microseconds=123456)]),
    # naive ISO means UTC
    (pd.Series(["2026-11-15T12:00:00", "2026-11-15 12:00:00", "2026-11-15T12:00:00.5",
                "2026-11-15"]),
     [NOON, NOON, NOON + pd.Timedelta(milliseconds=500), utc(2026, 11, 15)]),
    # several forms in one column
    (pd.Series([NOON_S, "2026-11-15T17:30:00+05:30", NOON_S * 1000, None], dtype=object),
     [NOON, NOON, NOON, None]),
])
def test_timestamps_of_every_form_parse_to_utc(values, expected):
    ts = N.canonical_timestamps(values)
    assert str(ts.dtype) == "datetime64[us, UTC]"
    assert as_list(ts) == expected
    assert list(ts.index) == list(values.index)


def test_native_datetimes_are_converted_to_utc():
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    naive = pd.Series(pd.to_datetime(["2026-11-15 12:00:00", None]))
    aware = pd.Series(pd.to_datetime(["2026-11-15T17:30:00"]).tz_localize(ist))
    objects = pd.Series([dt.datetime(2026, 11, 15, 17, 30, tzinfo=ist),
                         dt.datetime(2026, 11, 15, 12, 0), None], dtype=object)
    assert as_list(N.canonical_timestamps(naive)) == [NOON, None]
    assert as_list(N.canonical_timestamps(aware)) == [NOON]
    assert as_list(N.canonical_timestamps(objects)) == [NOON, NOON, None]
    for values in (naive, aware, objects):
        assert str(N.canonical_timestamps(values).dtype) == "datetime64[us, UTC]"


@pytest.mark.parametrize("garbage", [
    "not a date", "", "   ", "2026-13-45T00:00:00Z", "2026-02-30T12:00:00Z", "2026-11-15T24:00:00Z",
    "2026-11-15T12:00:60Z", "2026-11-15T12:00:00+24:00", "2026-11-15T12:00:00+05:30x",
    "99999999999999999999999", "12:00", "yesterday",
])
def test_unparseable_timestamps_become_nat_without_spoiling_their_neighbours(garbage):
    values = pd.Series(["2026-11-15T12:00:00Z", garbage, "2026-11-15T17:30:00+05:30"])
    assert as_list(N.canonical_timestamps(values)) == [NOON, None, NOON]


def test_impossible_dates_among_many_good_ones_are_the_only_nat():
    # Arrow's fast parser refuses a whole batch for one impossible date; only that row may fail.
    good = pd.date_range("2026-11-15", periods=3000, freq="7s", tz="UTC")
    text = pd.Series(good.strftime("%Y-%m-%dT%H:%M:%SZ"))
    text[[5, 1500, 2999]] = ["2026-02-30T00:00:00Z", "2026-11-15T25:00:00Z", "2026-11-31T01:02:03"]
    ts = N.canonical_timestamps(text)
    assert ts.isna().sum() == 3 and ts.isna()[[5, 1500, 2999]].all()
    keep = ~ts.isna()
    assert (ts[keep] == pd.Series(good)[keep]).all()


def test_non_finite_and_out_of_range_epochs_are_nat():
    ts = N.canonical_timestamps(pd.Series([np.inf, -np.inf, 1e30, float(NOON_S)]))
    assert as_list(ts) == [None, None, None, NOON]


# --- text --------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    (["a", "b c", None, ""], ["a", "b c", None, ""]),  # nothing to trim: returned as is
    ([" a", "b\t", "\nc\r"], ["a", "b", "c"]),
    (["a\u00a0", "\u3000b", "é ", " ü"], ["a", "b", "é", "ü"]),  # Unicode spaces, accents
    (["x\ty", "\u00e9t\u00e9"], ["x\ty", "\u00e9t\u00e9"]),  # inner whitespace and non-ASCII kept
])
def test_text_is_trimmed_at_both_ends_only(values, expected):
    assert N.trimmed_text(pd.Series(values, dtype="str")).to_pylist() == expected
    assert N.trimmed_text(pd.Series(values, dtype=object)).to_pylist() == expected


def test_trimming_a_slice_of_a_column_sees_only_the_slice():
    column = pd.Series([" a ", "b", "c ", "d"], dtype="str")
    assert N.trimmed_text(column.iloc[1:3]).to_pylist() == ["b", "c"]
    assert N.trimmed_text(column.iloc[3:]).to_pylist() == ["d"]


# --- event types -------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling, canonical", [
    ("view", "view"), ("View", "view"), ("VIEW", "view"), ("PAGE_VIEW", "view"),
    ("page view", "view"), ("page-view", "view"), (" pageview ", "view"),
    ("click", "click"), ("CLICK", "click"), ("Clicked", "click"),
    ("add_to_cart", "add_to_cart"), ("add-to-cart", "add_to_cart"), ("Add To Cart", "add_to_cart"),
    ("ADDTOCART", "add_to_cart"), ("cart_add", "add_to_cart"),
    ("purchase", "purchase"), ("Purchase", "purchase"), ("order", "purchase"),
    ("BUY", "purchase"), ("checkout", "purchase"),
])
def test_event_type_spellings_and_cases_map_to_the_vocabulary(spelling, canonical):
    assert as_list(N.canonical_event_types(pd.Series([spelling]))) == [canonical]


def test_unknown_and_missing_event_types_are_na_and_table_aliases_add_spellings():
    values = pd.Series(["hover", "scroll", "???", None, "tap", "Swipe-Right"])
    assert as_list(N.canonical_event_types(values)) == [None, None, None, None, "click", None]
    mapped = N.canonical_event_types(values, {"Swipe-Right": "click", "hover": "view"})
    assert as_list(mapped) == ["view", None, None, None, "click", "click"]
    assert mapped.dtype == "str"


def test_a_tables_own_spellings_are_folded_like_the_built_in_ones():
    """add-to-basket, Add To Basket and ADD_TO_BASKET are one spelling, as the built-in ones are."""
    values = pd.Series(["add-to-basket", "Add To Basket", " ADD_TO_BASKET ", "refund", "Refund"])
    encoded = N.encode_event_types(values, {"Add To Basket": "add_to_cart"}, ignore=("REFUND",))
    assert encoded.take().to_pylist() == ["add_to_cart"] * 3 + [None, None]
    assert encoded.ignored[encoded.slots].tolist() == [False, False, False, True, True]
    assert encoded.names[encoded.slots].tolist()[3:] == ["refund", "refund"]


# --- derived event ids -------------------------------------------------------------------------

def test_derived_event_ids_are_stable_content_hashes():
    events = pd.DataFrame({
        "user_id": pd.Series(["1", "1", "2"], dtype="str"),
        "item_id": pd.Series(["a", "a", "a"], dtype="str"),
        "event_type": pd.Series(["view", "view", "view"], dtype="str"),
        "ts": N.canonical_timestamps(pd.Series([NOON_S, NOON_S, NOON_S])),
    })
    ids = N.derive_event_ids(events)
    assert ids.dtype == "str"
    assert ids[0] == ids[1] != ids[2]  # an exact duplicate gets the same id
    key = events[["user_id", "item_id", "event_type"]].assign(ts=events["ts"].astype("int64"))
    expected = [f"h{h:016x}" for h in pd.util.hash_pandas_object(key, index=False)]
    assert list(ids) == expected  # the documented definition, digit for digit
    assert list(N.derive_event_ids(events.iloc[:0])) == []


# --- canonical tables --------------------------------------------------------------------------

def test_to_table_produces_exactly_the_canonical_schema_and_refuses_missing_columns():
    events = S.empty_events()
    assert S.to_table(events).schema == S.EVENT_SCHEMA
    with pytest.raises(ValueError, match="ts"):
        S.to_table(events.drop(columns=["ts"]))
    with pytest.raises(ValueError, match="missing columns"):
        S.conform(pa.table({"event_id": ["x"]}))


# --- column aliases ----------------------------------------------------------------------------

def table_config(**overrides) -> table_settings.TableConfig:
    base = dict(name="events", window_column="written", window_format="epoch_s")
    return table_settings.TableConfig(**{**base, **overrides})


@pytest.mark.parametrize("columns", [
    ["userId", "itemId", "eventType", "timestamp", "written"],
    ["user_id", "item_id", "event_type", "ts", "written"],
    ["UserID", "ItemID", "EventType", "EventTime", "written"],
    ["USER_ID", "Product_Id", "Action", "created_at", "written"],
    ["user-id", "sku", "event", "time", "written"],
])
def test_columns_are_matched_by_alias_whatever_their_case_and_separators(columns):
    mapping = DB.resolve_columns(table_config(), columns)
    assert [mapping[f] for f in ("user_id", "item_id", "event_type", "ts")] == columns[:4]
    assert "user_agent" not in mapping and "ip" not in mapping


def test_configured_mapping_wins_over_aliases():
    cfg = table_config(columns={"user_id": "account", "ts": "occurred"})
    actual = ["account", "user_id", "item", "type", "occurred", "ts", "written"]
    mapping = DB.resolve_columns(cfg, actual)
    assert mapping["user_id"] == "account" and mapping["ts"] == "occurred"
    assert mapping["item_id"] == "item" and mapping["event_type"] == "type"


def test_an_unmappable_column_names_the_table_and_the_field():
    with pytest.raises(ConfigError) as err:
        DB.resolve_columns(table_config(name="clicks"), ["who", "item_id", "event_type", "ts"])
    assert "clicks" in str(err.value) and "user_id" in str(err.value)
    assert "source.tables.clicks.columns" in str(err.value)


def test_a_mapped_column_that_does_not_exist_names_it():
    cfg = table_config(name="clicks", columns={"item_id": "product_code"})
    with pytest.raises(ConfigError) as err:
        DB.resolve_columns(cfg, ["user_id", "item_id", "event_type", "ts"])
    assert "clicks" in str(err.value) and "product_code" in str(err.value)


# --- table config: hostile and wrong values ----------------------------------------------------

def params_with(tables: dict) -> dict:
    return {"run": {"date": "2026-11-16"}, "history": {"days": 365},
            "fetch": {"max_clock_skew_minutes": 10},
            "source": {"tables": tables, "chunk_rows": 1000, "timeout_seconds": 600}}


GOOD_TABLE = {"window_column": "written", "window_format": "epoch_ms"}


@pytest.mark.parametrize("tables, named", [
    ({"events; DROP TABLE x": GOOD_TABLE}, "events; DROP TABLE x"),
    ({"events--": GOOD_TABLE}, "events--"),
    ({"public.events": GOOD_TABLE}, "public.events"),
    ({"1events": GOOD_TABLE}, "1events"),
    ({"events": {**GOOD_TABLE, "window_column": "written; DELETE FROM events"}},
     "written; DELETE FROM events"),
    ({"events": {**GOOD_TABLE, "columns": {"user_id": 'a"b'}}}, 'a"b'),
    ({"events": {**GOOD_TABLE, "columns": {"item_id": "item) OR (1=1"}}}, "item) OR (1=1"),
    ({"events": {**GOOD_TABLE, "columns": {"ts": "x" * 64}}}, "x" * 64),
    ({"events": {**GOOD_TABLE, "columns": {"user": "user_id"}}}, "user"),
    ({"events": {**GOOD_TABLE, "window_format": "epoch_us"}}, "epoch_us"),
    ({"events": {**GOOD_TABLE, "window_format": None}}, "window_format"),
    ({"events": {**GOOD_TABLE, "lookback_days": -1}}, "lookback_days"),
    ({"events": {**GOOD_TABLE, "lookback_days": "2; DROP"}}, "lookback_days"),
    ({"events": {**GOOD_TABLE, "event_types": {"hover": "like"}}}, "like"),
    ({"events": {**GOOD_TABLE, "where": "1=1"}}, "where"),
    ({"events": {**GOOD_TABLE, "columns": {"ts_offset": "timeframe"}}},
     "source.tables.events.ts_offset_unit is missing"),
    ({"events": {**GOOD_TABLE, "columns": {"ts_offset": "timeframe"}, "ts_offset_unit": "min"}},
     "source.tables.events.ts_offset_unit must be one of ['s', 'ms', 'us'], got 'min'"),
    ({"events": {**GOOD_TABLE, "ts_offset_unit": "ms"}},
     "source.tables.events.ts_offset_unit is set but source.tables.events.columns maps no "
     "ts_offset column"),
    ({"events": {**GOOD_TABLE, "columns": {"ts_offset": "tf; DROP"}, "ts_offset_unit": "ms"}},
     "tf; DROP"),
    ({}, "source.tables"),
])
def test_hostile_or_wrong_table_config_is_refused_naming_the_value(tables, named):
    with pytest.raises(ConfigError) as err:
        table_settings.source(of(params_with(tables)))
    message = str(err.value)
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize("timeout", [0, -5, 2.5, "600", None])
def test_source_timeout_seconds_must_be_a_whole_number_of_seconds(timeout):
    raw = params_with({"events": GOOD_TABLE})
    raw["source"]["timeout_seconds"] = timeout
    with pytest.raises(ConfigError, match=r"source.timeout_seconds must be an integer >= 1"):
        table_settings.source(of(raw))


def test_a_hostile_table_name_is_refused_before_any_database_is_touched(tmp_path):
    # An unreachable URL: the config is refused first, so no connection is even tried.
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'never.db'}"
    with pytest.raises(ConfigError, match="DROP TABLE"):
        fetch(params_with({"x; DROP TABLE x": GOOD_TABLE}), url, tmp_path / "delta")
    assert not (tmp_path / "missing-dir").exists() and not (tmp_path / "delta").exists()


def test_the_shipped_params_yaml_tables_are_valid():
    configs = table_settings.source(settings.load(ROOT / "params.yaml")).tables
    assert {c.name for c in configs} == {"web_events", "app_events", "legacy_clicks"}


# --- normalise: every quarantine reason --------------------------------------------------------

WINDOW = ingest.Window(start=utc(2026, 11, 15), end=utc(2026, 11, 16),
                  max_future=utc(2026, 11, 16, 0, 10), min_ts=utc(2025, 11, 16))
MAPPING = {"event_id": "id", "user_id": "UserID", "item_id": "item", "event_type": "type",
           "ts": "when", "user_agent": "agent", "ip": "ip"}
GOOD = {"id": "e0", "UserID": "1", "item": "10", "type": "view", "when": "2026-11-15T12:00:00Z",
        "agent": "Mozilla/5.0", "ip": "1.2.3.4"}
BAD_ROWS = [
    ("user_id:missing", "UserID", None),
    ("user_id:missing", "UserID", "undefined"),
    ("user_id:invalid", "UserID", "<script>alert(1)</script>"),
    ("item_id:missing", "item", None),
    ("item_id:invalid", "item", "item 10"),
    ("event_type:missing", "type", None),
    ("event_type:unknown", "type", "hover"),
    ("ts:missing", "when", None),
    ("ts:unparseable", "when", "not a date"),
    ("ts:future", "when", "2056-11-15T12:00:00Z"),
    ("ts:too_old", "when", "2001-01-01T00:00:00Z"),
]


def test_normalise_quarantines_every_reason_with_field_and_value():
    rows = [GOOD] + [{**GOOD, "id": f"e{i + 1}", column: value}
                     for i, (_, column, value) in enumerate(BAD_ROWS)]
    raw = pd.DataFrame(rows, index=range(100, 100 + len(rows)))  # any index: not assumed 0..n
    events, quarantine = F.normalise(raw, table_config(name="src"), MAPPING, WINDOW)

    assert list(events.columns) == list(S.COLUMNS)
    assert len(events) == 1
    row = events.iloc[0]
    assert (row.event_id, row.user_id, row.item_id, row.event_type, row.ts, row.source) == (
        "src:e0", "1", "10", "view", NOON, "src")
    assert (row.user_agent, row.ip) == ("Mozilla/5.0", "1.2.3.4")

    assert list(quarantine["reason"]) == [reason for reason, _, _ in BAD_ROWS]
    assert list(quarantine["field"]) == [reason.split(":")[0] for reason, _, _ in BAD_ROWS]
    assert as_list(quarantine["value"]) == [value for _, _, value in BAD_ROWS]
    assert (quarantine["source"] == "src").all()
    # The whole raw row is kept, so nothing fetched is lost.
    assert '"id":"e3"' in quarantine["raw"][2] and "script" in quarantine["raw"][2]
    assert pa.Table.from_pandas(quarantine, schema=S.QUARANTINE_SCHEMA, preserve_index=False)


def test_the_first_failing_field_is_the_reason():
    raw = pd.DataFrame([{**GOOD, "UserID": None, "item": None, "when": "garbage"}])
    _, quarantine = F.normalise(raw, table_config(), MAPPING, WINDOW)
    assert list(quarantine["reason"]) == ["user_id:missing"]


def test_the_future_allows_the_configured_clock_skew():
    raw = pd.DataFrame([{**GOOD, "id": "a", "when": "2026-11-16T00:09:59Z"},
                        {**GOOD, "id": "b", "when": "2026-11-16T00:10:01Z"}])
    events, quarantine = F.normalise(raw, table_config(), MAPPING, WINDOW)
    assert list(events["event_id"]) == ["events:a"]
    assert list(quarantine["reason"]) == ["ts:future"]


def test_normalise_trims_text_derives_missing_ids_and_nulls_empty_optionals():
    raw = pd.DataFrame([
        {**GOOD, "id": " e1 ", "agent": "  ", "ip": None},
        {**GOOD, "id": None, "UserID": "2"},
        {**GOOD, "id": "", "UserID": "3"},
    ])
    events, _ = F.normalise(raw, table_config(), MAPPING, WINDOW)
    assert events["event_id"][0] == "events:e1"
    assert as_list(events["user_agent"])[0] is None and as_list(events["ip"])[0] is None
    derived = N.derive_event_ids(events.iloc[1:][["user_id", "item_id", "event_type", "ts"]])
    assert list(events["event_id"][1:]) == list(derived)
    assert all(e.startswith("h") and len(e) == 17 for e in events["event_id"][1:])


def test_normalise_without_optional_columns_or_own_ids():
    mapping = {k: v for k, v in MAPPING.items() if k in DB.REQUIRED_SOURCE_FIELDS}
    raw = pd.DataFrame([GOOD, GOOD])  # an exact duplicate: same derived id
    events, quarantine = F.normalise(raw, table_config(), mapping, WINDOW)
    assert len(events) == 2 and events["event_id"].nunique() == 1
    assert events["user_agent"].isna().all() and events["ip"].isna().all()
    assert quarantine.empty and list(quarantine.columns) == S.QUARANTINE_SCHEMA.names
    assert S.to_table(events).schema == S.EVENT_SCHEMA


def test_normalise_adds_the_ts_offset_and_quarantines_offsets_it_cannot_use():
    mapping = {**MAPPING, "ts": "day", "ts_offset": "tf"}
    cfg = table_config(columns={"ts": "day", "ts_offset": "tf"}, ts_offset_unit="ms")
    offsets = [0, 1500, "2500", 1.5, None, -1, "abc", float("nan"), float("inf"), 1e300]
    raw = pd.DataFrame([{**GOOD, "id": f"e{k}", "day": "2026-11-15", "tf": tf}
                        for k, tf in enumerate(offsets)])
    events, quarantine = F.normalise(raw, cfg, mapping, WINDOW)
    assert list(events["event_id"]) == ["events:e0", "events:e1", "events:e2", "events:e3"]
    assert [t - utc(2026, 11, 15) for t in events["ts"]] == [
        pd.Timedelta(ms, "ms") for ms in (0, 1500, 2500, 1.5)]
    assert list(quarantine["reason"]) == ["ts_offset:invalid"] * 6
    assert list(quarantine["field"]) == ["ts_offset"] * 6
    assert as_list(quarantine["value"])[1:3] == ["-1", "abc"]
    # A bad date is the date's fault, whatever the offset; one an offset pushes past the window's
    # end and its clock skew is in the future.
    raw = pd.DataFrame([{**GOOD, "day": "not a day", "tf": -1},
                        {**GOOD, "day": "2026-11-15", "tf": 86_400_000 + 11 * 60_000}])
    _, quarantine = F.normalise(raw, cfg, mapping, WINDOW)
    assert list(quarantine["reason"]) == ["ts:unparseable", "ts:future"]


def test_normalise_of_an_empty_chunk():
    raw = pd.DataFrame({c: pd.Series([], dtype=object) for c in MAPPING.values()})
    events, quarantine = F.normalise(raw, table_config(), MAPPING, WINDOW)
    assert events.empty and quarantine.empty
    assert S.to_table(events).schema == S.EVENT_SCHEMA



def test_time_order_cuts_are_searchsorted_over_the_chunks_or_none_out_of_order():
    """evaluate slices data/clean at the holdout start and the window end when its rows are in
    time order: over several chunks (empty ones, equal times across a boundary included) the cuts
    are np.searchsorted's on the whole column; rows out of order, within a chunk or across two,
    give None (the caller filters instead)."""
    rng = np.random.default_rng(3)
    micros = np.sort(rng.integers(0, 10_000, 300)).astype(np.int64)
    micros[100:103] = micros[99]  # equal times across the boundary below

    def table(parts: list[np.ndarray]) -> pa.Table:
        return pa.Table.from_batches(
            [pa.record_batch([pa.array(p, pa.int64()).view(pa.timestamp("us", tz="UTC"))],
                             names=["ts"]) for p in parts],
            schema=pa.schema([("ts", pa.timestamp("us", tz="UTC"))]))

    bounds = [-5, 0, int(micros[99]), int(micros[150]) + 1, 5_000, 10_000, 20_000]
    parts = [micros[:0], micros[:100], micros[100:100], micros[100:217], micros[217:]]
    assert table(parts).column("ts").num_chunks == 5
    assert S.time_order_cuts(table(parts), bounds) == np.searchsorted(micros, bounds).tolist()
    assert S.time_order_cuts(table([]), bounds) == [0] * len(bounds)
    swapped = micros.copy()
    swapped[40] = swapped[41] + 1  # one row later than the next, inside the first chunk
    assert S.time_order_cuts(table([swapped[:100], swapped[100:]]), bounds) is None
    assert S.time_order_cuts(table([micros[150:], micros[:150]]), bounds) is None
