"""Ranking metrics of the out-of-time evaluation: our own code, with exact definitions (the lists
themselves come from dailyrec.model.topk).

Notation, for one evaluated user u:
    T_u        the user's truth set: items u interacted with in the holdout period, that u had not
               interacted with before it, and that are in the catalogue (items seen before it).
               Evaluated users have |T_u| >= 1.
    rec_u      the recommended list, best first; rec_u[r] is the item at rank r = 1..K. A slot may be
               empty (-1) when fewer than K items could be recommended; an empty slot is never a hit.
    hit_u(r)   1 if rec_u[r] is in T_u, else 0.

Per-user values at cut-off k (k <= K), each averaged over evaluated users (macro average):
    precision@k = sum_{r<=k} hit(r) / k                      (divides by k, even when |T| < k)
    recall@k    = sum_{r<=k} hit(r) / |T|                    (divides by |T|, not min(k, |T|))
    AP@k        = sum_{r<=k} hit(r) * precision@r / min(k, |T|);   MAP@k is its mean
    NDCG@k      = DCG@k / IDCG@k,  DCG@k = sum_{r<=k} hit(r) / log2(r + 1),
                  IDCG@k = sum_{r=1}^{min(k, |T|)} 1 / log2(r + 1)   (binary relevance)
    hit rate@k  = 1 if sum_{r<=k} hit(r) > 0 else 0
and over all evaluated users together:
    coverage@k  = |union of rec_u[1..k]| / catalogue size   (empty slots not counted)

Expected percentile rank (Hu, Koren & Volinsky 2008, section 6), lower is better, random ~ 0.5:
    rank_ui     percentile of truth item i in u's full ranking of the candidate items (every
                catalogue item u did not have before the holdout): 0 = first, 1 = last,
                (#candidates scored higher + 0.5 * #other candidates tied) / (#candidates - 1)
    EPR         = sum_{u, i in T_u} w_ui * rank_ui / sum_{u, i in T_u} w_ui,
                with w_ui the number of u's relevant holdout events on i (the paper's r^t_ui).

Scores are dense (users in a batch x catalogue), float32 or float64; items that must not be
recommended to a user (what they already had) are NaN, items a model does not know are -inf (ranked
last, never recommended). Everything is vectorised over a batch of users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dailyrec.core.arrays import distinct, in_slices

METRICS = ("precision", "recall", "map", "ndcg", "hit_rate")


def hits(recommended: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """(n, K) recommended item indices (-1 empty) and (n x items) truth -> (n, K) bool hits."""
    truth = truth.tocsr()
    truth.sort_indices()
    n_items = truth.shape[1]
    rows = np.repeat(np.arange(truth.shape[0], dtype=np.int64), np.diff(truth.indptr))
    truth_keys = rows * n_items + truth.indices  # sorted: rows ascending, indices sorted per row
    keys = np.arange(recommended.shape[0], dtype=np.int64)[:, None] * n_items + recommended
    pos = np.searchsorted(truth_keys, keys)
    pos = np.minimum(pos, max(len(truth_keys) - 1, 0))
    found = (truth_keys[pos] == keys) if len(truth_keys) else np.zeros(keys.shape, bool)
    return found & (recommended >= 0)


def curves(hit: np.ndarray, truth_sizes: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric at every cut-off k = 1..K: {metric: array of K values}, averaged over users."""
    n, K = hit.shape
    if n == 0:
        return {m: np.full(K, np.nan) for m in METRICS}
    h = hit.astype(np.float64)
    ranks = np.arange(1, K + 1, dtype=np.float64)
    size = truth_sizes.astype(np.float64)[:, None]
    cum = np.cumsum(h, axis=1)
    ideal_n = np.minimum(ranks[None, :], size)  # min(k, |T|)
    discount = 1.0 / np.log2(ranks + 1.0)
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discount)])[ideal_n.astype(np.int64)]
    return {
        "precision": (cum / ranks).mean(axis=0),
        "recall": (cum / size).mean(axis=0),
        "map": (np.cumsum(h * cum / ranks, axis=1) / ideal_n).mean(axis=0),
        "ndcg": (np.cumsum(h * discount, axis=1) / ideal_dcg).mean(axis=0),
        "hit_rate": (cum > 0).mean(axis=0),
    }


def coverage(recommended: np.ndarray, k: int, n_catalogue: int) -> float:
    items = recommended[:, :k]
    return float(len(distinct(items[items >= 0])) / n_catalogue) if n_catalogue else 0.0


def percentile_ranks(scores: np.ndarray, rows: np.ndarray, items: np.ndarray,
                     chunk_cells: int = 4_000_000) -> np.ndarray:
    """Percentile rank of scores[rows[j], items[j]] among the non-NaN entries of its row. A large
    batch is counted in slices of pairs, one per core (NumPy's passes release the GIL)."""
    out = np.empty(len(rows), dtype=np.float64)
    candidates = scores.shape[1] - np.count_nonzero(np.isnan(scores), axis=1)
    step = max(1, chunk_cells // max(1, scores.shape[1]))

    def count(start: int, stop: int) -> None:
        for lo in range(start, stop, step):  # chunks of (user, item) pairs, to bound memory
            hi = min(stop, lo + step)
            r, i = rows[lo:hi], items[lo:hi]
            own = scores[r, i][:, None]
            block = scores[r]
            # count_nonzero is several times faster than summing the boolean arrays
            higher = np.count_nonzero(block > own, axis=1)
            tied = np.count_nonzero(block == own, axis=1) - 1  # NaN never equals: never ties
            out[lo:hi] = (higher + 0.5 * tied) / np.maximum(candidates[r] - 1, 1)

    in_slices(len(rows), count, len(rows) * scores.shape[1])
    return out


def expected_percentile_rank(ranks: np.ndarray, weights: np.ndarray) -> float:
    total = float(np.sum(weights))
    return float(np.dot(ranks, weights) / total) if total > 0 else float("nan")
