"""Events -> the users x items confidence matrix that ALS is fitted on (Hu, Koren & Volinsky 2008).

    r_ui = sum over u's events on i of
               weight[event_type] * q(quantity) * 0.5 ** (age_days / half_life_days)
    c_ui = 1 + alpha * r_ui                   (transform "linear")
    c_ui = 1 + alpha * log(1 + r_ui / eps)    (transform "log")

The quantity is what a table's quantity column holds (play counts, items bought, seconds watched;
dailyrec.core.schema); events without one count 1. It is capped at quantity_cap (a bot's 10,000 plays
must not swamp a user's row), then scaled by quantity_transform: "linear" q = min(x, cap), or
"log" q = log2(1 + min(x, cap)) (1 play counts 1, 3 count 2, 7 count 3: diminishing returns, the
usual choice for play counts). A quantity of 0 contributes nothing.

age_days is measured from `now` (the end of the data window), so the same events and settings always
give the same matrix. Events of a type weighted 0 are left out entirely: a user or item that has only
such events gets no row or column. Ids are sorted (byte order), so the id maps do not depend on the
order of the events.

implicit's own `alpha` multiplies the values it is given (c = alpha * value, and its GPU fit ignores
alpha altogether), so the confidence is computed here and implicit is always given alpha=1.
Everything is vectorised over Arrow and NumPy arrays: no Python loop over events, users or items.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.core import schema as S
from dailyrec.core.arrays import in_slices
from dailyrec.core.errors import ConfigError, DataError
from dailyrec.model.settings import TRANSFORMS, ConfidenceConfig

MATRIX_COLUMNS = ["user_id", "item_id", "event_type", "ts"]  # and quantity, when present


@dataclass
class Interactions:
    """Aggregated strength r_ui per (user, item), with the id maps of its rows and columns."""

    user_ids: np.ndarray  # str, sorted; row i is user_ids[i]
    item_ids: np.ndarray  # str, sorted; column j is item_ids[j]
    strength: sp.csr_matrix  # float64 r_ui, sorted indices, no explicit zeros
    events: int  # events that contributed (weight > 0)
    events_ignored: int  # events of a type weighted 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.strength.shape


def _coded(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(per-row codes, the values they index) of a text column, NOT NULL: hashed once, or, for a
    column read as a Parquet dictionary, its own codes (its values may include some no row
    uses: data/clean's dictionaries are the window's)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = array if pa.types.is_dictionary(array.type) else pc.dictionary_encode(array)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


def encode_ids(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Text ids (plain or dictionary-encoded) -> (int32 codes, sorted unique ids of the rows).
    Hashes once (or takes the dictionary's codes), then sorts only the distinct ids."""
    indices, values = _coded(column)
    used = np.flatnonzero(np.bincount(indices, minlength=len(values)))
    if len(used) < len(values):  # values no row uses get no code
        renumber = np.full(len(values), -1, dtype=np.int64)
        renumber[used] = np.arange(len(used))
        indices, values = renumber[indices], values.take(pa.array(used))
    order = pc.sort_indices(values).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[indices]
    uniques = values.take(pa.array(order)).to_numpy(zero_copy_only=False)
    return codes, uniques.astype(str)


def quantity_scale(quantity: np.ndarray, config: ConfidenceConfig) -> np.ndarray:
    """q(quantity) per event (NaN, no quantity, counts 1)."""
    x = np.minimum(np.where(np.isnan(quantity), 1.0, quantity), config.quantity_cap)
    return x if config.quantity_transform == "linear" else np.log2(1.0 + x)


def event_weights(events: pa.Table, config: ConfidenceConfig, now: dt.datetime) -> np.ndarray:
    """Per event: weight[event_type] * q(quantity) * 0.5 ** (age_days / half_life) (float64)."""
    indices, values = _coded(events["event_type"])
    names = values.to_pylist()  # a few types
    known = np.array([config.event_weights.get(t, np.nan) for t in names], dtype=np.float64)
    present = np.bincount(indices, minlength=len(names)) > 0
    if np.isnan(known[present]).any():
        bad = [t for t, w, p in zip(names, known, present) if p and np.isnan(w)]
        raise DataError(f"events have event types {bad} that are not canonical "
                          f"{list(S.EVENT_TYPES)}: the input is not clean data")
    quantity = events["quantity"].to_numpy(zero_copy_only=False).astype(np.float64) \
        if "quantity" in events.column_names and events["quantity"].null_count < len(events) \
        else None
    ts = pc.cast(events["ts"], pa.int64()).to_numpy() if config.decay_half_life_days > 0 else None
    now_us, half_life = int(now.timestamp() * 1_000_000), config.decay_half_life_days
    weights = np.empty(len(indices), dtype=np.float64)

    def weigh(lo: int, hi: int) -> None:  # events lo..hi: each event's own arithmetic
        part = known[indices[lo:hi]]
        if quantity is not None:
            part *= quantity_scale(quantity[lo:hi], config)
        if ts is not None:
            # 0.5 ** (max(now - ts, 0) / 1 day / half_life), in place: the same operations in
            # the same order as the expression (the same bits), without an array per step
            age = now_us - ts[lo:hi]
            np.maximum(age, 0, out=age)
            decay = np.divide(age, S.MICROS_PER_DAY)
            del age
            np.negative(decay, out=decay)
            np.divide(decay, half_life, out=decay)
            part *= np.exp2(decay, out=decay)
        weights[lo:hi] = part

    in_slices(len(weights), weigh, len(weights))  # one slice per core: the same bits
    return weights


def aggregate(events: pa.Table, config: ConfidenceConfig, now: dt.datetime) -> Interactions:
    """Sum the weighted events per (user, item) into a sparse users x items strength matrix."""
    missing = [c for c in MATRIX_COLUMNS if c not in events.column_names]
    if missing:
        raise DataError(f"events are missing columns {missing}")
    nulls = {c: events[c].null_count for c in MATRIX_COLUMNS if events[c].null_count}
    if nulls:
        raise DataError(f"events have nulls in {nulls}: the input is not clean data")
    weights = event_weights(events, config, now)
    used = weights > 0
    n_ignored = int((~used).sum())
    if n_ignored:
        events = events.filter(pa.array(used))
        weights = weights[used]
    users, user_ids = encode_ids(events["user_id"])
    items, item_ids = encode_ids(events["item_id"])
    strength = sp.coo_matrix((weights, (users, items)),
                             shape=(len(user_ids), len(item_ids))).tocsr()  # sums duplicates
    strength.sort_indices()
    strength.eliminate_zeros()  # decay can underflow to 0: an explicit 0 would mean "dislike"
    return Interactions(user_ids=user_ids, item_ids=item_ids, strength=strength,
                        events=int(len(weights)), events_ignored=n_ignored)


def transform_values(r: np.ndarray, kind: str, alpha: float, eps: float) -> np.ndarray:
    """r -> c (float64)."""
    if kind == "linear":
        return 1.0 + alpha * np.asarray(r, dtype=np.float64)
    if kind == "log":
        return 1.0 + alpha * np.log1p(np.asarray(r, dtype=np.float64) / eps)
    raise ConfigError(f"unknown confidence transform {kind!r}; use one of {list(TRANSFORMS)}")


def transform(strength: sp.csr_matrix, kind: str, alpha: float, eps: float) -> sp.csr_matrix:
    """r -> c, as float32 (what implicit fits on). The sparsity pattern is kept as is."""
    values = transform_values(strength.data, kind, alpha, eps)
    out = sp.csr_matrix((values.astype(np.float32), strength.indices.copy(), strength.indptr.copy()),
                        shape=strength.shape)
    out.has_sorted_indices = strength.has_sorted_indices
    return out


def confidence(interactions: Interactions, config: ConfidenceConfig) -> sp.csr_matrix:
    return transform(interactions.strength, config.transform, config.alpha, config.eps)


def one_event_confidence(config: ConfidenceConfig, event_type: str = "view") -> float:
    """The confidence that one fresh event of event_type gives its item: what a visitor's recent
    item counts for when folding in (the API knows the items, not how they were used). A type
    weighted 0 counts as the lightest weighted type."""
    weight = config.event_weights.get(event_type, 0.0)
    if weight <= 0:
        weight = min(w for w in config.event_weights.values() if w > 0)
    return float(transform_values(np.array([weight]), config.transform, config.alpha,
                                  config.eps)[0])
