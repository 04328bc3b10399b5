"""The session protocol (visitors who do not return: a shop of anonymous sessions has next to no
returning users to score): every visitor of the holdout with >= 2 relevant events, known before it
or not, whose distinct catalogue items (in time order, ties in file order) number d >= 2: the first
ceil(d/2) of them (at most eval.session_max_context) are the context, the later ones the targets.
On the same cases, each recommending max(cutoffs) items and never a context item: fold_in (the
split's fitted item factors, each context item at one event's confidence: what the API does for a
visitor it does not know, dailyrec.model.foldin), similar_items (sum of cosines to the context
items, same factors) and most_popular. Metrics: dailyrec.model.ranking, as for users.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.core.arrays import distinct
from dailyrec.model import confidence as C
from dailyrec.model import ranking as R
from dailyrec.model.topk import top_k
from dailyrec.model.foldin import FoldIn
from dailyrec.model.recommender import PopularRecommender
from dailyrec.model.scoring import Scored, tick
from dailyrec.model.split import Split, positions


SESSION_MODELS = ("fold_in", "similar_items", "most_popular")


SKIP_REASONS = ("fewer_than_2_events", "no_new_later_item", "unknown_items")


@dataclass
class Sessions:
    """The session protocol's cases: held-out visitors whose earlier items predict their later
    ones. Case r is visitor visitor_ids[r]; its context is context[r] (catalogue positions in time
    order, -1 = padding), its targets row r of truth."""

    visitor_ids: np.ndarray  # str, (m,)
    context: np.ndarray  # (m, c) int64
    truth: sp.csr_matrix  # m x catalogue, 1 per target item
    returning: np.ndarray  # (m,) bool: the visitor had events before the holdout
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def m(self) -> int:
        return len(self.visitor_ids)


def make_sessions(split: Split, max_context: int) -> Sessions:
    """Every visitor of the holdout with >= 2 relevant events, known before it or not, is a case
    when it has at least 2 distinct catalogue items: in time order (ties: the events' order in
    the file), the first ceil(d/2) of its d distinct catalogue items (at least 1, at most
    max_context) are the context, the later ones the targets. The others are counted by reason:
    fewer_than_2_events; no_new_later_item (one item, repeated); unknown_items (>= 2 distinct
    items but fewer than 2 in the catalogue). Vectorised: no loop over visitors or events."""
    relevant = split.relevant
    n_items = split.n_items
    if relevant is None or relevant.num_rows == 0:
        return _no_sessions(n_items)
    n = relevant.num_rows
    visitor, visitor_ids = C.encode_ids(relevant["user_id"])
    any_item, any_ids = C.encode_ids(relevant["item_id"])
    item = positions(relevant["item_id"], split.train.item_ids)
    ts = pc.cast(relevant["ts"], pa.int64()).to_numpy(zero_copy_only=False)
    n_visitors = len(visitor_ids)
    visitor = visitor.astype(np.int64)
    events = np.bincount(visitor, minlength=n_visitors)
    distinct_any = np.bincount(distinct(visitor * len(any_ids) + any_item) // len(any_ids),
                               minlength=n_visitors)
    # events in (visitor, time, file order) order; each (visitor, catalogue item) at its first
    order = np.lexsort((np.arange(n), ts, visitor))
    v, i = visitor[order], item[order]
    known = i >= 0
    v, i = v[known], i[known]
    _, first = np.unique(v * max(n_items, 1) + i, return_index=True)
    first.sort()  # back in (visitor, time) order: each visitor's distinct items, first seen first
    v, i = v[first], i[first]
    d = np.bincount(v, minlength=n_visitors)  # distinct catalogue items per visitor
    context_len = np.minimum(np.maximum((d + 1) // 2, 1), max_context)
    is_case = d >= 2  # then context_len < d: at least one target
    m = int(is_case.sum())
    case_of = np.full(n_visitors, -1, dtype=np.int64)
    case_of[is_case] = np.arange(m)
    start = np.concatenate([[0], np.cumsum(d)[:-1]])
    rank = np.arange(len(v)) - start[v]  # 0-based order of the item among the visitor's items
    mine = is_case[v]
    in_context = mine & (rank < context_len[v])
    target = mine & ~in_context
    width = int(context_len[is_case].max()) if m else 1
    context = np.full((m, width), -1, dtype=np.int64)
    context[case_of[v[in_context]], rank[in_context]] = i[in_context]
    truth = sp.csr_matrix((np.ones(int(target.sum())), (case_of[v[target]], i[target])),
                          shape=(m, n_items))
    truth.sort_indices()
    case_ids = visitor_ids[is_case]
    returning = pc.is_in(pa.array(case_ids, pa.string()),
                         value_set=pa.array(split.train.user_ids, pa.string())) \
        .to_numpy(zero_copy_only=False).astype(bool) if m else np.zeros(0, dtype=bool)
    fewer = events < 2
    one_item = ~fewer & (distinct_any < 2)
    unknown = ~fewer & ~one_item & ~is_case
    counts = {
        "holdout_visitors": int(n_visitors), "cases": m,
        "returning_cases": int(returning.sum()),
        "context_items": int(in_context.sum()), "target_items": int(target.sum()),
        "context_capped": int(((d + 1) // 2 > max_context)[is_case].sum()),
        "skipped": {"fewer_than_2_events": int(fewer.sum()),
                    "no_new_later_item": int(one_item.sum()),
                    "unknown_items": int(unknown.sum())},
    }
    return Sessions(visitor_ids=case_ids, context=context, truth=truth, returning=returning,
                    counts=counts)


def _no_sessions(n_items: int) -> Sessions:
    return Sessions(visitor_ids=np.zeros(0, dtype=str), context=np.full((0, 1), -1, np.int64),
                    truth=sp.csr_matrix((0, n_items)), returning=np.zeros(0, dtype=bool),
                    counts={"holdout_visitors": 0, "cases": 0, "returning_cases": 0,
                            "context_items": 0, "target_items": 0, "context_capped": 0,
                            "skipped": {reason: 0 for reason in SKIP_REASONS}})


def score_sessions(sessions: Sessions, item_factors: np.ndarray, regularization: float,
                   item_confidence: float, popular: PopularRecommender, cutoffs: list[int],
                   batch_cells: int = 8_000_000, max_batch: int = 2_000) -> dict[str, Scored]:
    """Each model recommends max(cutoffs) items per case, never its context items:

    fold_in        the visitor's factors solved from its context items (each with
                   item_confidence), item factors fixed: implicit's recalculate_user, batched
                   (dailyrec.model.foldin), what the API does at request time
    similar_items  score(i) = sum over context items j of cosine(y_i, y_j), same item factors
    most_popular   the split's most-popular order

    Measured against the targets with dailyrec.model.ranking (the user protocol's definitions)."""
    K = max(cutoffs)
    m, n_items = sessions.m, sessions.truth.shape[1]
    fold = FoldIn(item_factors, regularization)
    y = fold.item_factors
    norms = np.linalg.norm(y, axis=1)
    unit = (y / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    factors = y.shape[1]
    batch = max(1, min(max_batch, batch_cells // max(n_items, factors * factors, 1)))
    recommended = {name: np.full((m, K), -1, dtype=np.int64) for name in SESSION_MODELS}
    seconds = dict.fromkeys(SESSION_MODELS, 0.0)
    for lo in range(0, m, batch):  # batches of visitors
        hi = min(m, lo + batch)
        context = sessions.context[lo:hi]
        rows, cols = np.nonzero(context >= 0)
        clock = time.perf_counter()
        solved = fold.solve(context, item_confidence)
        recommended["fold_in"][lo:hi] = fold.recommend(solved, K)[0]  # leaves the context out
        clock = tick(seconds, "fold_in", clock)
        used = (context >= 0)[..., None]
        scores = (unit[np.maximum(context, 0)] * used).sum(axis=1) @ unit.T
        scores[rows, context[rows, cols]] = np.nan
        recommended["similar_items"][lo:hi] = top_k(scores, K)
        clock = tick(seconds, "similar_items", clock)
        recommended["most_popular"][lo:hi] = popular.recommend_excluding(context, K)
        tick(seconds, "most_popular", clock)
    sizes = np.diff(sessions.truth.indptr)
    out = {}
    for name, top in recommended.items():
        curves = R.curves(R.hits(top, sessions.truth), sizes)
        metrics: dict[str, float] = {}
        for c in cutoffs:
            for metric in R.METRICS:
                metrics[f"{metric}_at_{c}"] = float(curves[metric][c - 1])
            metrics[f"coverage_at_{c}"] = R.coverage(top, c, n_items)
        out[name] = Scored(metrics=metrics, curves=curves, seconds=seconds[name],
                           recommended=top)
    return out
