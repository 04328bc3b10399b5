"""The k best items of each row of a score matrix, and the order that ranks them: what evaluate,
publish, fold-in and the API all use to turn scores into a list.

Scores are dense (rows x items), float32 or float64; items that must not be recommended to a row
(what the user already had) are NaN, items a model does not know are -inf (ranked last, never
recommended).
"""

from __future__ import annotations

import numpy as np

from dailyrec.core.arrays import in_slices


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(b, n) scores -> (b, k) item indices, best first; -1 where no finite-scored item is left.

    Among tied scores the lower item index comes first, the k-th place included: the answer is
    np.argsort's stable order of the scores, descending, NaN (excluded) last, cut at k. Rows are
    independent, and NumPy releases the GIL in its passes: a large batch is ranked in slices of
    rows, one per core (the same answer as one slice)."""
    b, n = scores.shape
    parts = in_slices(b, lambda lo, hi: _top_k(scores[lo:hi], k), b * n)
    return parts[0] if len(parts) == 1 else np.vstack(parts)


# A row of n >= SAMPLE_FROM * k items finds a floor for its k-th best score among every
# SAMPLE_STRIDE-th item; rows left with more than HEAVY * k candidates at or above it (mass ties,
# such as a user without factors) are sorted whole.
SAMPLE_STRIDE, SAMPLE_FROM, HEAVY = 8, 64, 32


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    b, n = scores.shape
    top = np.full((b, k), -1, dtype=np.int64)
    k_eff = min(k, n)
    if b == 0 or k_eff == 0:
        return top
    if b == 1:  # one visitor of the API: fewer NumPy calls
        return _top_k_row(scores, k, k_eff)
    # The k-th best score of any subset of a row is a floor for the row's own k-th best: only the
    # scores at or above it can be in the top k, a few times k of them instead of the whole row.
    sample = scores[:, ::SAMPLE_STRIDE] if n >= SAMPLE_FROM * k_eff else scores
    negated = _negated(sample)
    floor = -np.partition(negated, k_eff - 1, axis=1)[:, k_eff - 1]
    del negated
    above = scores >= floor[:, None]  # NaN never is; a -inf floor (few scored) keeps them all
    limit = max(HEAVY * k_eff, 1024)
    if np.count_nonzero(above) > limit * b // 2:
        heavy = np.flatnonzero(np.count_nonzero(above, axis=1) > limit)
        if len(heavy):
            above[heavy] = False
            negated = _negated(scores[heavy])
            top[heavy, :k_eff] = np.argsort(negated, axis=1, kind="stable")[:, :k_eff]
    cells = np.flatnonzero(above)  # row-major: by row, then item
    rows, cols = np.divmod(cells, n)
    order = best_first(rows, scores.reshape(-1)[cells])
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=b)
    place = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    first = place < k_eff
    top[rows[first], place[first]] = cols[first]
    picked = np.take_along_axis(scores, np.maximum(top, 0), axis=1)
    top[~np.isfinite(picked)] = -1  # excluded or unknown items fill a row that ran out
    return top


def _top_k_row(scores: np.ndarray, k: int, k_eff: int) -> np.ndarray:
    negated = _negated(scores[0])
    if k_eff < len(negated):
        kth = np.partition(negated, k_eff - 1)[k_eff - 1]
        candidates = np.flatnonzero(negated <= kth)  # ascending: a stable sort keeps ties so
    else:
        candidates = np.arange(len(negated))
    best = candidates[np.argsort(negated[candidates], kind="stable")[:k_eff]]
    best[~np.isfinite(scores[0, best])] = -1
    return np.concatenate([best, np.full(k - k_eff, -1, dtype=np.int64)])[None, :]


def _negated(scores: np.ndarray) -> np.ndarray:
    """-scores with NaN (excluded) as +inf: ascending is best first, excluded last, and
    partition stays on its fast path (NaN slows it down)."""
    negated = np.negative(scores)
    return np.fmin(negated, np.inf, out=negated)


def best_first(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The order that sorts (rows ascending, values descending, NaN last), ties kept in their
    order (top_k's candidates; publish's explanations' histories)."""
    if values.dtype != np.float32:
        return np.lexsort((np.arange(len(rows)), -values, rows))
    # One stable integer sort of (row, value) packed in 64 bits: float32 bits made to sort like
    # the numbers (+ 0.0 turns -0.0 into 0.0, which ties with it), NaN after them all
    bits = (np.negative(values) + np.float32(0.0)).view(np.uint32)
    bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    bits = np.where(np.isnan(values), np.uint32(0xFFFFFFFF), bits).astype(np.uint64)
    return np.argsort((rows.astype(np.uint64) << np.uint64(32)) | bits, kind="stable")
