"""Evaluation: how good is today's configuration, out of time, against baselines; and the gate.

    input   data/clean/ (a file per day), models/ (its meta.json must match params.yaml's
            train section),
            params.yaml (run.date, train, eval, mlflow), metrics/mlflow.json (the train run)
    output  metrics/eval.json          ALS metrics at K=20 and eval.k, counts, a `baselines` block,
                                       a `sessions` block (the session protocol), `protocol`
            metrics/gate.json          {"passed", "reason", ...}: publish obeys `passed`
            metrics/plots/eval_at_k.csv  recall/ndcg/precision at k = 1..max(20, eval.k) per model

The split: the last eval.holdout_days days of the window (the days before run.date) are held out.
The same train configuration is fitted on the events before them (recency decay measured from the
holdout start, as if it were run.date), and scored on the held-out users' new interactions: items
they had not had before the holdout, that the catalogue (items seen before it) contains. Users
unknown before the holdout cannot be scored by any model and are only counted. Metric definitions:
dailyrec.model.ranking. Every model is scored through the
one Recommender interface (dailyrec.model.recommender).

Baselines, on the same split, users and truth:
- most_popular: items by number of distinct users before the holdout.
- published: the registry version carrying mlflow.alias (what publish serves), when there is one.
  If its training data ended before the holdout start it never saw the held-out days, and the
  artefact itself is scored ("artifact" mode: what users were actually served; users it does not
  know get its most-popular list, items it does not know rank last). Otherwise (eval.holdout_days > 1,
  or re-running a past day) scoring it would leak the answers, so its configuration (meta.json params)
  is refitted on the split instead ("refit" mode: compares configurations only). The mode is recorded.

The session protocol (visitors who do not return: a shop of anonymous sessions has next to no
returning users to score): every visitor of the holdout with >= 2 relevant events, known before it or
not, whose distinct catalogue items (in time order, ties in file order) number d >= 2: the first
ceil(d/2) of them (at most eval.session_max_context) are the context, the later ones the targets. On
the same cases, each recommending max(cutoffs) items and never a context item: fold_in (the split's
fitted item factors, each context item at one event's confidence: what the API does for a visitor it
does not know, dailyrec.model.foldin), similar_items (sum of cosines to the context items, same
factors) and most_popular. Metrics: dailyrec.model.ranking, as for users.

The gate: with at least eval.min_test_users users to score (the user protocol), the model's
eval.gate_metric must beat most-popular by eval.min_lift (relative), and must not fall more than
eval.max_drop (relative) below the published model. With fewer users but at least eval.min_test_users
session cases, fold_in's eval.gate_metric must beat the session most-popular by eval.min_lift (no
published comparison). Otherwise too little data (no days before the holdout, or too few users and
sessions) fails the gate with that reason. gate.json's `protocol` says which protocol decided.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dailyrec.core import schema as S
from dailyrec.core.arrays import distinct
from dailyrec.core.errors import ConfigError
from dailyrec.core.files import tmp_path
from dailyrec.model import als, artifacts
from dailyrec.model import confidence as C
from dailyrec.model import ranking as R
from dailyrec.model.foldin import FoldIn
from dailyrec.model.recommender import (ALSRecommender, MappedRecommender, PopularRecommender,
                                        Recommender)
from dailyrec.model.settings import EvalConfig
from dailyrec.model.settings import ConfidenceConfig, TrainConfig, train_from_dict


# --- the split ----------------------------------------------------------------------------------

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
    u = _positions(relevant["user_id"], train.user_ids)
    i = _positions(relevant["item_id"], train.item_ids)
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


def _positions(values: pa.ChunkedArray | pa.Array, ids: np.ndarray) -> np.ndarray:
    """Each value's position in ids (int64), -1 where it is not there."""
    found = pc.index_in(values, value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
    if found.dtype.kind == "f":  # nulls (not found) come back as NaN
        return np.where(np.isnan(found), -1, found).astype(np.int64)
    return found.astype(np.int64)

# --- the session protocol: visitors who do not return ---------------------------------------------

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
    item = _positions(relevant["item_id"], split.train.item_ids)
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


# --- scoring ------------------------------------------------------------------------------------

@dataclass
class Scored:
    metrics: dict[str, float]
    curves: dict[str, np.ndarray]  # metric -> values at k = 1..K
    seconds: float
    recommended: np.ndarray | None = None  # (cases, K) positions, -1 empty (the session models)


def score(model: Recommender, split: Split, cutoffs: list[int], batch_cells: int = 8_000_000
          ) -> Scored:
    """Rank the catalogue for every evaluated user (their earlier items left out) and measure."""
    start = time.perf_counter()
    if isinstance(model, PopularRecommender):
        recommended, ranks = _rank_popular(model, split, max(cutoffs), batch_cells)
        return _measure(recommended, ranks, split, cutoffs, start)
    K = max(cutoffs)
    n, n_items = len(split.users), split.n_items
    history = split.train.strength
    truth = split.truth.tocsr()
    recommended = np.full((n, K), -1, dtype=np.int64)
    ranks = np.empty(truth.nnz, dtype=np.float64)
    batch = max(1, batch_cells // max(1, n_items))
    for lo in range(0, n, batch):  # batches of users
        hi = min(n, lo + batch)
        rows = split.users[lo:hi]
        scores = model.score(rows)
        had = history[rows].tocoo()
        scores[had.row, had.col] = np.nan
        recommended[lo:hi] = R.top_k(scores, K)
        part = truth[lo:hi].tocoo()
        base = truth.indptr[lo]
        # tocoo of a sorted CSR keeps CSR order, so the ranks line up with truth.data.
        ranks[base:base + part.nnz] = R.percentile_ranks(scores, part.row, part.col)
    return _measure(recommended, ranks, split, cutoffs, start)


def _rank_popular(popular: PopularRecommender, split: Split, K: int, batch_cells: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """What score() computes from most-popular's dense score rows, from the sparse history alone.

    Every user ranks the same global order with their own items left out, so (exactly, not
    approximately): a user's top K are the first K positions of the order they do not have, and a
    truth item at position p of the order has p - #(their items before p) candidates above it,
    no ties, among n_items - #(their items) candidates. Costs O(history) instead of
    O(users x catalogue)."""
    n_items = split.n_items
    truth = split.truth.tocsr()
    truth.sort_indices()
    had = split.train.strength[split.users].tocsr()
    position = np.empty(n_items, dtype=np.int64)
    position[popular.order] = np.arange(n_items)
    had_pos = position[had.indices]
    had_rows = np.repeat(np.arange(had.shape[0], dtype=np.int64), np.diff(had.indptr))
    # Per row, the positions of the user's own items, sorted (row-major keys).
    had_keys = np.sort(had_rows * (n_items + 1) + had_pos)
    truth_rows = np.repeat(np.arange(truth.shape[0], dtype=np.int64), np.diff(truth.indptr))
    truth_pos = position[truth.indices]
    before = np.searchsorted(had_keys, truth_rows * (n_items + 1) + truth_pos) \
        - had.indptr[truth_rows]
    candidates = n_items - np.diff(had.indptr)
    ranks = (truth_pos - before) / np.maximum(candidates[truth_rows] - 1, 1)
    # Top K: a user with h items of their own finds their K within the first K + h positions.
    # Users are grouped by that width rounded up to a power of two (a loop over <= 30 groups and
    # their batches, never over users), so one heavy user does not widen everyone's rows.
    n = had.shape[0]
    recommended = np.full((n, K), -1, dtype=np.int64)
    widths = np.minimum(n_items, K + np.diff(had.indptr))
    group = np.ceil(np.log2(np.maximum(widths, 1))).astype(np.int64)
    for g in np.unique(group):
        users = np.flatnonzero(group == g)
        width = min(n_items, 1 << int(g))
        step = max(1, batch_cells // width)
        for lo in range(0, len(users), step):
            rows = users[lo:lo + step]
            sub = had[rows]
            sub_rows = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
            sub_pos = position[sub.indices]
            inside = sub_pos < width
            marked = np.zeros((len(rows), width), dtype=bool)
            marked[sub_rows[inside], sub_pos[inside]] = True
            first = np.argsort(marked, axis=1, kind="stable")[:, :K]  # unmarked first, in order
            top = popular.order[first]
            top[np.take_along_axis(marked, first, axis=1)] = -1
            recommended[rows, :top.shape[1]] = top
    return recommended, ranks


def _measure(recommended: np.ndarray, ranks: np.ndarray, split: Split, cutoffs: list[int],
             start: float) -> Scored:
    truth = split.truth.tocsr()
    n_items = split.n_items
    hit = R.hits(recommended, truth)
    sizes = np.diff(truth.indptr)
    curves = R.curves(hit, sizes)
    metrics: dict[str, float] = {}
    for c in cutoffs:
        for name in R.METRICS:
            metrics[f"{name}_at_{c}"] = float(curves[name][c - 1])
        metrics[f"coverage_at_{c}"] = R.coverage(recommended, c, n_items)
    metrics["mean_percentile_rank"] = R.expected_percentile_rank(ranks, truth.data)
    return Scored(metrics=metrics, curves=curves, seconds=time.perf_counter() - start)


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
        clock = _tick(seconds, "fold_in", clock)
        used = (context >= 0)[..., None]
        scores = (unit[np.maximum(context, 0)] * used).sum(axis=1) @ unit.T
        scores[rows, context[rows, cols]] = np.nan
        recommended["similar_items"][lo:hi] = R.top_k(scores, K)
        clock = _tick(seconds, "similar_items", clock)
        recommended["most_popular"][lo:hi] = popular.recommend_excluding(context, K)
        _tick(seconds, "most_popular", clock)
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


def _tick(seconds: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    seconds[name] += now - since
    return now


def fit_on_split(split: Split, config: TrainConfig, device: str
                 ) -> tuple[C.Interactions, als.FitResult]:
    """Fit a configuration on the split's training events; returns (its interactions, the fit).
    The split's strength matrix is reused unless the event weights or the decay differ."""
    interactions = split.train
    if (config.confidence.event_weights, config.confidence.decay_half_life_days) != \
            (split.confidence.event_weights, split.confidence.decay_half_life_days):
        interactions = C.aggregate(split.before, config.confidence, split.holdout_start)
    matrix = C.confidence(interactions, config.confidence)
    return interactions, als.fit(matrix, config, device)


# --- the gate -----------------------------------------------------------------------------------

def _lift(value: float, base: float) -> float:
    return (value / base - 1.0) if base > 0 else (float("inf") if value > 0 else 0.0)


def _lift_sentence(metric: str, value: float, base: float, lift: float, config: EvalConfig,
                   model: str = "") -> tuple[bool, str]:
    name = f"{model} {metric}" if model else metric
    if lift >= config.min_lift:
        return True, (f"{name} {value:.4f} beats most-popular {base:.4f} by {_pct(lift)} "
                      f"(needs {_pct(config.min_lift)})")
    return False, (f"{name} {value:.4f} vs most-popular {base:.4f}: lift {_pct(lift)} is "
                   f"below the required {_pct(config.min_lift)}")


def _gate(config: EvalConfig, protocol: str | None, value=None, base=None, lift=None
          ) -> dict[str, Any]:
    return {"metric": config.gate_metric, "value": value, "most_popular": base,
            "lift": lift if lift is None or np.isfinite(lift) else None,
            "min_lift": config.min_lift, "published": None, "published_version": None,
            "drop": None, "max_drop": config.max_drop, "protocol": protocol}


def decide(model: dict[str, float], popular: dict[str, float],
           published: dict[str, Any] | None, config: EvalConfig) -> dict[str, Any]:
    """The user protocol's verdict: the lift over most-popular, and the drop below the published
    model when there is one."""
    metric = config.gate_metric
    value, base = model[metric], popular[metric]
    lift = _lift(value, base)
    gate = _gate(config, "users", value, base, lift)
    passed, sentence = _lift_sentence(metric, value, base, lift, config)
    reasons = [sentence]
    if published is not None:
        ref = published[metric]
        drop = (1.0 - value / ref) if ref > 0 else 0.0
        gate.update(published=ref, published_version=published.get("model_version"), drop=drop)
        label = f"published v{published.get('model_version')} ({published.get('mode')})"
        if drop <= config.max_drop:
            reasons.append(f"{_pct(0.0 - drop + 0.0)} vs {label} {ref:.4f} (max drop {_pct(config.max_drop)})")
        else:
            passed = False
            reasons.append(f"falls {_pct(drop)} below {label} {ref:.4f}; at most "
                           f"{_pct(config.max_drop)} allowed")
    else:
        reasons.append("no published model to compare with")
    gate["passed"] = passed
    gate["reason"] = ("passed: " if passed else "failed: ") + "; ".join(reasons)
    return gate


def decide_sessions(fold_in: dict[str, float], popular: dict[str, float], users: int, cases: int,
                    config: EvalConfig) -> dict[str, Any]:
    """The session protocol's verdict, when too few returning users can be scored: fold-in must
    beat most-popular on the same cases by eval.min_lift. The published model is not compared."""
    metric = config.gate_metric
    value, base = fold_in[metric], popular[metric]
    lift = _lift(value, base)
    gate = _gate(config, "sessions", value, base, lift)
    passed, sentence = _lift_sentence(metric, value, base, lift, config, "fold-in")
    gate["passed"] = passed
    gate["reason"] = (("passed: " if passed else "failed: ")
                      + f"session protocol ({users} returning users with new items, fewer than "
                        f"eval.min_test_users={config.min_test_users}; {cases} visitor sessions): "
                      + sentence + "; the published model is not compared in the session protocol")
    return gate


def _pct(x: float) -> str:
    return "inf" if not np.isfinite(x) else f"{x * 100:+.1f}%"

# --- evaluating a configuration ------------------------------------------------------------------

def evaluate(train_config: TrainConfig, config: EvalConfig, run_date: dt.date,
             window_end: dt.datetime, events: pa.Table,
             published: Callable[[], tuple[artifacts.ModelBundle, dict] | None] | None = None
             ) -> dict[str, Any]:
    """Everything but the writing. `published`: None, or a function giving (bundle, info) or
    None, called once the candidate is scored (the stage looks it up meanwhile)."""
    holdout_start = window_end - dt.timedelta(days=config.holdout_days)
    device = als.resolve_device(train_config.device)
    split = make_split(events, train_config.confidence, holdout_start, window_end,
                       config.relevant_event_types)
    sessions = make_sessions(split, config.session_max_context)
    report: dict[str, Any] = {
        "run_date": run_date.isoformat(), "holdout_start": holdout_start.isoformat(),
        "holdout_days": config.holdout_days, "k": config.k, "gate_metric": config.gate_metric,
        "counts": split.counts, "device": device,
    }
    out: dict[str, Any] = {"report": report, "curves": {}, "session_curves": {},
                           "fit_losses": [], "durations": {}}
    history = split.train.strength.nnz > 0
    n_users, n_cases = len(split.users), sessions.m
    users_ok = history and n_users >= config.min_test_users
    fitted = None
    if history and (users_ok or n_cases > 0):
        _, fitted = fit_on_split(split, train_config, device)
        out["fit_losses"] = fitted.losses
        out["durations"]["fit"] = fitted.seconds
    popular_recommender = PopularRecommender(split.train.strength)
    report["sessions"] = _session_report(sessions, fitted, popular_recommender, train_config,
                                         config, out)
    if not users_ok:
        report.update(status="insufficient_data", baselines={"most_popular": None,
                                                             "published": None},
                      lift_over_most_popular=None)
        session_models = report["sessions"]["models"]
        if history and n_cases >= config.min_test_users:
            out["gate"] = decide_sessions(session_models["fold_in"],
                                          session_models["most_popular"], n_users, n_cases,
                                          config)
        else:
            problem = (f"not enough history: no events before the holdout start "
                       f"{holdout_start.date()} (eval.holdout_days={config.holdout_days})"
                       if not history else
                       f"too few users to evaluate: {n_users} held-out users with new items and "
                       f"{n_cases} visitor sessions with a later item, "
                       f"eval.min_test_users={config.min_test_users}")
            out["gate"] = {**_gate(config, None), "passed": False, "reason": f"failed: {problem}"}
        report["protocol"] = out["gate"]["protocol"]
        return out
    model = score(ALSRecommender(fitted.model), split, config.cutoffs)
    popular = score(popular_recommender, split, config.cutoffs)
    out["durations"].update(score_model=model.seconds, score_most_popular=popular.seconds)
    report.update(status="ok", **model.metrics)
    curves = {"als": model.curves, "most_popular": popular.curves}
    published_block = None
    found = published() if published is not None else None
    if found is not None:
        bundle, info = found
        published_scored, mode = score_published(bundle, split, train_config, config, device,
                                                  model)
        published_block = {**published_scored.metrics, **info, "mode": mode}
        curves["published"] = published_scored.curves
        out["durations"]["score_published"] = published_scored.seconds
    report["baselines"] = {"most_popular": popular.metrics, "published": published_block}
    base = popular.metrics[config.gate_metric]
    report["lift_over_most_popular"] = (model.metrics[config.gate_metric] / base - 1.0) \
        if base > 0 else None
    out["gate"] = decide(model.metrics, popular.metrics, published_block, config)
    report["protocol"] = "users"
    out["curves"] = curves
    return out


def _session_report(sessions: Sessions, fitted: als.FitResult | None,
                    popular: PopularRecommender, train_config: TrainConfig, config: EvalConfig,
                    out: dict[str, Any]) -> dict[str, Any]:
    """eval.json's `sessions` block; scores the session models when there are cases."""
    item_confidence = C.one_event_confidence(train_config.confidence)
    block: dict[str, Any] = {
        "status": "ok" if fitted is not None and sessions.m >= config.min_test_users
        else "insufficient_data",
        "counts": sessions.counts, "max_context": config.session_max_context,
        "item_confidence": item_confidence,
        "models": dict.fromkeys(SESSION_MODELS), "lift_over_most_popular": None,
    }
    if fitted is None or sessions.m == 0:
        return block
    scored = score_sessions(sessions, np.asarray(fitted.model.item_factors),
                            train_config.regularization, item_confidence, popular, config.cutoffs)
    block["models"] = {name: s.metrics for name, s in scored.items()}
    base = scored["most_popular"].metrics[config.gate_metric]
    if base > 0:
        block["lift_over_most_popular"] = scored["fold_in"].metrics[config.gate_metric] / base - 1
    out["session_curves"] = {f"session_{name}": s.curves for name, s in scored.items()}
    out["durations"].update({f"score_session_{name}": s.seconds for name, s in scored.items()})
    return block


def score_published(bundle: artifacts.ModelBundle, split: Split, train_config: TrainConfig,
                    config: EvalConfig, device: str, candidate: Scored) -> tuple[Scored, str]:
    last = (bundle.meta.get("data") or {}).get("last_event")
    last_ts = pd.Timestamp(last) if last else None
    if last_ts is not None and last_ts.tz_localize(None) < \
            pd.Timestamp(split.holdout_start).tz_convert(None):
        mapped = MappedRecommender(bundle, split.train.user_ids, split.train.item_ids)
        return score(mapped, split, config.cutoffs), "artifact"
    published_config = train_from_dict(bundle.meta.get("params") or {}, train_config.as_dict())
    if published_config.replace(device=train_config.device, track_loss=train_config.track_loss) \
            == train_config:
        return candidate, "refit"  # same configuration on the same split: the same model
    interactions, fitted = fit_on_split(split, published_config, device)
    if interactions is split.train:
        return score(ALSRecommender(fitted.model), split, config.cutoffs), "refit"
    refit = artifacts.ModelBundle(model=fitted.model, user_ids=interactions.user_ids,
                                  item_ids=interactions.item_ids,
                                  user_items=interactions.strength)
    mapped = MappedRecommender(refit, split.train.user_ids, split.train.item_ids)
    return score(mapped, split, config.cutoffs), "refit"


def check_models(models_dir: Path, config: TrainConfig, run_date: dt.date) -> None:
    """models/ must be the model of this configuration and day: the gate speaks for it."""
    meta_file = Path(models_dir) / artifacts.META_FILE
    if not meta_file.exists():
        raise ConfigError(f"{meta_file} not found: run train first")
    meta = json.loads(meta_file.read_text())
    current = json.loads(json.dumps(config.as_dict()))
    if meta.get("params") != current:
        changed = sorted(k for k in set(current) | set(meta.get("params") or {})
                         if (meta.get("params") or {}).get(k) != current.get(k))
        raise ConfigError(f"{models_dir} was trained with other train params ({changed}) than "
                          f"params.yaml: run train first")
    if meta.get("run_date") != run_date.isoformat():
        raise ConfigError(f"{models_dir} was trained for run.date {meta.get('run_date')}, "
                          f"params.yaml has {run_date}: run train first")


def write_plots(path: Path, curves: dict[str, dict[str, np.ndarray]], K: int) -> None:
    """One row per k: <model>_<metric> columns, for dvc plots (see dvc.yaml `plots:`)."""
    columns = [f"{model}_{metric}" for model in ("als", "most_popular", "published")
               for metric in ("recall", "ndcg", "precision")
               if model in curves or model != "published"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["k", *columns])
        if curves:
            for k in range(1, K + 1):
                row = []
                for col in columns:
                    model, metric = col.rsplit("_", 1)
                    row.append(f"{float(curves[model][metric][k - 1]):.6f}")
                writer.writerow([k, *row])
    tmp.replace(path)
