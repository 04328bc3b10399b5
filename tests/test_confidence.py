"""The confidence matrix: weights, recency decay, aggregation, transforms, id maps, bad settings."""

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest

from dailyrec.core import schema as S
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.model import confidence as C
from dailyrec.model import settings as model
from dailyrec.model.settings import ConfidenceConfig
from tests.clean_events import frame
from tests.params import of, project_params

NOW = dt.datetime(2026, 11, 15, tzinfo=dt.timezone.utc)
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 0.0, "purchase": 8.0}


def table(rows):
    return S.to_table(frame(rows))


def config(**changes):
    base = dict(event_weights=WEIGHTS, decay_half_life_days=1.0, transform="linear", alpha=2.0,
                eps=0.5, quantity_transform="log", quantity_cap=100.0)
    return ConfidenceConfig(**{**base, **changes})


EVENTS = [
    ("u1", "i1", "view", "2026-11-14T00:00:00Z"),      # 1 * 0.5 ** 1   = 0.5
    ("u1", "i1", "purchase", "2026-11-15T00:00:00Z"),  # 8 * 0.5 ** 0   = 8   -> r = 8.5
    ("u2", "i2", "click", "2026-11-13T00:00:00Z"),     # 2 * 0.5 ** 2   = 0.5
    ("u1", "i2", "view", "2026-11-15T06:00:00Z"),      # after `now`: age 0 -> 1
    ("u3", "i1", "add_to_cart", "2026-11-14T12:00:00Z"),  # weight 0: left out, u3 gets no row
]


def test_weights_decay_and_sum_per_user_item():
    got = C.aggregate(table(EVENTS), config(), NOW)
    assert got.user_ids.tolist() == ["u1", "u2"] and got.item_ids.tolist() == ["i1", "i2"]
    assert got.strength.toarray().tolist() == [[8.5, 1.0], [0.0, 0.5]]
    assert got.strength.nnz == 3  # no explicit zeros
    assert (got.events, got.events_ignored) == (4, 1)


def test_no_decay_when_half_life_is_zero():
    got = C.aggregate(table(EVENTS), config(decay_half_life_days=0.0), NOW)
    assert got.strength.toarray().tolist() == [[9.0, 1.0], [0.0, 2.0]]


def test_linear_and_log_transforms_follow_hu_koren_volinsky():
    got = C.aggregate(table(EVENTS), config(), NOW)
    linear = C.confidence(got, config(transform="linear"))
    assert linear.dtype == np.float32
    assert linear.toarray().tolist() == [[18.0, 3.0], [0.0, 2.0]]  # 1 + 2r
    log = C.confidence(got, config(transform="log")).toarray()
    assert log[0, 0] == pytest.approx(1 + 2 * math.log(1 + 8.5 / 0.5), rel=1e-6)
    assert log[1, 1] == pytest.approx(1 + 2 * math.log(1 + 0.5 / 0.5), rel=1e-6)
    assert log[1, 0] == 0.0  # the sparsity pattern is r's


def test_ids_are_sorted_whatever_the_event_order():
    rows = [("9", "b", "view", "2026-11-14T00:00:00Z"), ("10", "a", "click", "2026-11-14T01:00:00Z"),
            ("9", "a", "view", "2026-11-14T02:00:00Z")]
    one = C.aggregate(table(rows), config(), NOW)
    two = C.aggregate(table(rows[::-1]), config(), NOW)
    assert one.user_ids.tolist() == ["10", "9"] and one.item_ids.tolist() == ["a", "b"]
    assert (one.strength != two.strength).nnz == 0


def test_a_non_canonical_event_type_is_an_error_naming_it():
    with pytest.raises(DataError, match="hover"):
        C.aggregate(table([("u", "i", "hover", "2026-11-14T00:00:00Z")]), config(), NOW)


def test_null_ids_are_an_error():
    t = table([("u", "i", "view", "2026-11-14T00:00:00Z")])
    t = t.set_column(1, pa.field("user_id", pa.string()), pa.array([None], pa.string()))
    with pytest.raises(DataError, match="nulls in {'user_id': 1}"):
        C.aggregate(t, config(), NOW)


@pytest.mark.parametrize("section, message", [
    ({"event_weights": {"view": 1}}, "missing \\['click', 'add_to_cart', 'purchase'\\]"),
    ({"event_weights": {**WEIGHTS, "hover": 1}}, "unknown \\['hover'\\]"),
    ({"event_weights": {**WEIGHTS, "view": -1}}, "train.event_weights.view must be a number >= 0"),
    ({"event_weights": dict.fromkeys(WEIGHTS, 0)}, "all 0"),
    ({"event_weights": WEIGHTS, "confidence": "sqrt"}, "train.confidence must be one of"),
    ({"event_weights": WEIGHTS, "alpha": 0}, "train.alpha must be a number > 0"),
    ({"event_weights": WEIGHTS, "eps": "x"}, "train.eps must be a number"),
    ({"event_weights": WEIGHTS, "decay_half_life_days": -3}, "decay_half_life_days must be a number >= 0"),
])
def test_bad_settings_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        model.train(of(project_params(**{f"train.{k}": v for k, v in section.items()})))


def test_a_quantity_scales_the_weight_capped_and_log_scaled():
    """Play counts: 1 play counts 1, 3 plays 2, 1,000 plays are capped (at 7 here: 3); no
    quantity counts 1, a quantity of 0 nothing: a bot's plays must not swamp a row."""
    rows = [("u1", "a", "view", "2026-11-15T00:00:00Z"), ("u1", "b", "view", "2026-11-15T00:00:00Z"),
            ("u1", "c", "view", "2026-11-15T00:00:00Z"), ("u1", "d", "view", "2026-11-15T00:00:00Z"),
            ("u2", "a", "view", "2026-11-15T00:00:00Z")]
    events = table(rows).set_column(8, S.EVENT_SCHEMA.field("quantity"),
                                    pa.array([1.0, 3.0, 1000.0, 0.0, None]))
    got = C.aggregate(events, config(decay_half_life_days=0.0, quantity_cap=7.0), NOW)
    assert got.item_ids.tolist() == ["a", "b", "c"] and got.events_ignored == 1  # d: 0 plays
    assert got.strength.toarray().tolist() == [[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]]
    linear = C.aggregate(events, config(decay_half_life_days=0.0, quantity_cap=7.0,
                                        quantity_transform="linear"), NOW)
    assert linear.strength.toarray()[0].tolist() == [1.0, 3.0, 7.0]


def test_ids_read_as_parquet_dictionaries_give_the_same_matrix(tmp_path):
    """train and evaluate read data/clean's ids as its Parquet dictionaries, which hold the whole
    window's values (also those filter_noise removed, and an odd event type no kept row has): the
    same ids, codes and matrix as plain text, in several row groups; a value no row uses gets no
    row, column or complaint."""
    import pyarrow.parquet as pq

    from dailyrec.model import training

    rows = EVENTS * 3 + [("u9", "i9", "hover", "2026-11-14T00:00:00Z")]  # dropped below
    plain = table(rows)
    written = plain.slice(0, len(rows) - 1).cast(pa.schema([
        f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in training.DICTIONARY_COLUMNS
        else f for f in plain.schema]))
    # the dictionaries of all the rows (u9, i9, hover included), as filter_noise writes them
    written = pa.Table.from_arrays(
        [pa.DictionaryArray.from_arrays(written[c].combine_chunks().indices,
                                        plain[c].unique()) if c in training.DICTIONARY_COLUMNS
         else written[c] for c in written.column_names], names=written.column_names)
    pq.write_table(written, tmp_path / "events.parquet", row_group_size=4)
    coded = training.read_events(tmp_path / "events.parquet", dictionary=True)
    assert pa.types.is_dictionary(coded.schema.field("user_id").type)
    assert "u9" in coded["user_id"].chunk(0).dictionary.to_pylist()
    for column in ("user_id", "item_id"):
        got, want = C.encode_ids(coded[column]), C.encode_ids(plain.slice(0, len(rows) - 1)[column])
        assert np.array_equal(got[0], want[0]) and got[1].tolist() == want[1].tolist()
    got = C.aggregate(coded, config(), NOW)
    want = C.aggregate(training.read_events(tmp_path / "events.parquet"), config(), NOW)
    assert got.user_ids.tolist() == want.user_ids.tolist() == ["u1", "u2"]
    assert (got.strength != want.strength).nnz == 0 and got.events == want.events


@pytest.mark.parametrize("half_life", [0.0, 3.5])
def test_weights_of_a_large_window_computed_in_slices_are_the_expressions_bits(half_life):
    """event_weights works on slices of events, one per core: each weight has the bits of
    weight[type] * q(quantity) * 2 ** -(max(now - ts, 0) / 1 day / half_life) for that event."""
    from dailyrec.core.arrays import PARALLEL_CELLS

    rng = np.random.default_rng(8)
    n = PARALLEL_CELLS + 12_345
    now_us = int(NOW.timestamp() * 1_000_000)
    micros = now_us - rng.integers(-3_600_000_000, 40 * 86_400_000_000, n)
    types = np.array(["view", "click", "purchase"])[rng.integers(0, 3, n)]
    quantity = np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 300, n).astype(float))
    events = pa.table({"ts": pa.array(micros.astype("datetime64[us]")).cast(
                           pa.timestamp("us", tz="UTC")),
                       "event_type": pa.array(types).dictionary_encode(),
                       "quantity": pa.array(quantity, from_pandas=True)})
    got = C.event_weights(events, config(decay_half_life_days=half_life), NOW)
    expected = np.array([WEIGHTS[t] for t in types.tolist()])
    expected *= np.log2(1.0 + np.minimum(np.where(np.isnan(quantity), 1.0, quantity), 100.0))
    if half_life:
        expected *= np.exp2(-(np.maximum(now_us - micros, 0) / 86_400e6) / half_life)
    assert np.array_equal(got.view(np.uint64), expected.view(np.uint64))
