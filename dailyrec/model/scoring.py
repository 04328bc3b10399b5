"""Scoring a recommender on the split: its top-K lists for the held-out users, their hits against
the truth, the metrics at each cutoff (dailyrec.model.ranking) and the expected percentile rank.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from dailyrec.model import ranking as R
from dailyrec.model.topk import top_k
from dailyrec.model.recommender import (PopularRecommender,
                                        Recommender)
from dailyrec.model.split import Split


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
        return measure(recommended, ranks, split, cutoffs, start)
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
        recommended[lo:hi] = top_k(scores, K)
        part = truth[lo:hi].tocoo()
        base = truth.indptr[lo]
        # tocoo of a sorted CSR keeps CSR order, so the ranks line up with truth.data.
        ranks[base:base + part.nnz] = R.percentile_ranks(scores, part.row, part.col)
    return measure(recommended, ranks, split, cutoffs, start)


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


def measure(recommended: np.ndarray, ranks: np.ndarray, split: Split, cutoffs: list[int],
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


def tick(seconds: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    seconds[name] += now - since
    return now
