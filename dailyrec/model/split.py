"""The out-of-time split of the evaluation: the last eval.holdout_days days of the window held
out; the same train configuration fitted on the events before them (recency decay measured from
the holdout start, as if it were run.date) and scored on the held-out users' new interactions:
items they had not had before the holdout, that the catalogue (items seen before it) contains.
Users unknown before the holdout cannot be scored by any model and are only counted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.core import schema as S
from dailyrec.model import confidence as C
from dailyrec.model.settings import ConfidenceConfig


@dataclass
class Split:
    holdout_start: dt.datetime
    window_end: dt.datetime
    before: pa.Table  # events before the holdout (kept to refit other configurations)
    confidence: ConfidenceConfig  # what `train` was aggregated with
    train: C.Interactions  # strength matrix of `before`, decay measured from holdout_start
    users: np.ndarray  # rows of train.user_ids that are evaluated (|T_u| >= 1)
    truth: sp.csr_matrix  # len(users) x catalogue: relevant holdout events per new (user, item)
    counts: dict[str, int] = field(default_factory=dict)
    relevant: pa.Table | None = None  # the holdout's relevant events, in file order (sessions)

    @property
    def n_items(self) -> int:
        return len(self.train.item_ids)


def make_split(events: pa.Table, confidence: ConfidenceConfig, holdout_start: dt.datetime,
               window_end: dt.datetime, relevant_types: tuple[str, ...]) -> Split:
    ts = events["ts"]
    start = pa.scalar(holdout_start, pa.timestamp("us", tz="UTC"))
    end = pa.scalar(window_end, pa.timestamp("us", tz="UTC"))
    cut = S.time_order_cuts(events, [start.value, end.value])
    if cut is not None:
        # data/clean is in time order (filter_noise writes it so): the parts are slices, no copies
        before, holdout = events.slice(0, cut[0]), events.slice(cut[0], cut[1] - cut[0])
        after = events.num_rows - cut[1]
    else:
        before = events.filter(pc.less(ts, start))
        holdout = events.filter(pc.and_(pc.greater_equal(ts, start), pc.less(ts, end)))
        after = int(pc.sum(pc.greater_equal(ts, end)).as_py() or 0)
    train = C.aggregate(before, confidence, holdout_start)
    relevant = _decoded(holdout.filter(pc.is_in(holdout["event_type"],
                                                value_set=pa.array(list(relevant_types)))))
    u = positions(relevant["user_id"], train.user_ids)
    i = positions(relevant["item_id"], train.item_ids)
    known_user, known_item = u >= 0, i >= 0
    both = known_user & known_item
    shape = train.shape
    counts_ui = sp.coo_matrix((np.ones(int(both.sum())), (u[both], i[both])), shape=shape).tocsr()
    counts_ui.sum_duplicates()
    had = counts_ui.multiply(train.strength > 0).tocsr()
    new = (counts_ui - had).tocsr()
    new.eliminate_zeros()
    new.sort_indices()
    users = np.flatnonzero(np.diff(new.indptr))
    holdout_users = pc.count_distinct(relevant["user_id"]).as_py() if relevant.num_rows else 0
    unknown_users = pc.count_distinct(relevant.filter(pa.array(~known_user))["user_id"]).as_py() \
        if (~known_user).any() else 0
    return Split(
        holdout_start=holdout_start, window_end=window_end, before=before,
        confidence=confidence, train=train,
        users=users, truth=new[users], relevant=relevant,
        counts={
            "events_before_holdout": before.num_rows,
            "holdout_events": holdout.num_rows,
            "holdout_relevant_events": relevant.num_rows,
            "events_after_window": after,
            "catalogue_items": shape[1],
            "known_users": shape[0],
            "holdout_users": int(holdout_users),
            "holdout_users_unknown": int(unknown_users),
            "holdout_events_unknown_item": int((known_user & ~known_item).sum()),
            "holdout_pairs_already_had": int(had.nnz),
            "evaluated_users": int(len(users)),
            "truth_pairs": int(new.nnz),
        })


def _decoded(table: pa.Table) -> pa.Table:
    """The table with dictionary-encoded columns as plain values (the holdout: a day's events)."""
    return table.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type)
                                 else f for f in table.schema]))


def positions(values: pa.ChunkedArray | pa.Array, ids: np.ndarray) -> np.ndarray:
    """Each value's position in ids (int64), -1 where it is not there."""
    found = pc.index_in(values, value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
    if found.dtype.kind == "f":  # nulls (not found) come back as NaN
        return np.where(np.isnan(found), -1, found).astype(np.int64)
    return found.astype(np.int64)
