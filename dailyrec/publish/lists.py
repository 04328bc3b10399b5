"""What publish serves, computed from the model (the Redis writer only stores it): each user's
history for explanations (histories), each item's most similar items (similar_items), and what one
recent item of a visitor counts for at request time (fold_in_confidence). Users' lists come from
the model's recommender (dailyrec.model.recommender).
"""

from __future__ import annotations


import numpy as np
import scipy.sparse as sp

from dailyrec.model import artifacts
from dailyrec.model.confidence import one_event_confidence
from dailyrec.model.topk import best_first



def fold_in_confidence(bundle: artifacts.ModelBundle) -> float:
    """What one recent item of a visitor counts for at request time: one fresh view under the
    model's own confidence settings (its meta.json)."""
    return one_event_confidence(bundle.train_config().confidence)


def histories(user_items: sp.csr_matrix, rows: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's k most confident items ((n, k) positions, -1 padded) and their confidences,
    most confident first (ties: lower position first). Vectorised over the users' CSR rows."""
    sub = user_items[rows]
    sub.sort_indices()
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(sub.indptr))
    # (row, confidence descending), ties in their order: positions are in order within each row,
    # so this is the lexsort (row, -confidence, position), in one packed sort for float32
    order = best_first(row_of, sub.data)
    rank = np.arange(sub.nnz) - sub.indptr[row_of[order]]
    keep = rank < k
    positions = np.full((len(rows), k), -1, dtype=np.int64)
    confidence = np.zeros((len(rows), k), dtype=np.float32)
    positions[row_of[order][keep], rank[keep]] = sub.indices[order][keep]
    confidence[row_of[order][keep], rank[keep]] = sub.data[order][keep]
    return positions, confidence


def similar_items(model, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of each item's n most similar items (cosine of the item factors,
    implicit's similar_items), the item itself left out; -1 where fewer exist."""
    n_items = model.item_factors.shape[0]
    ids, scores = model.similar_items(rows, N=min(n + 1, n_items))
    ids, scores = np.atleast_2d(ids).astype(np.int64), np.atleast_2d(scores)
    # The item itself is usually first, but ties can place it anywhere: move it last, drop it.
    order = np.argsort(ids == rows[:, None], axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)[:, :n]
    scores = np.take_along_axis(scores, order, axis=1)[:, :n]
    missing = (ids == rows[:, None]) | (ids < 0) | ~np.isfinite(scores)
    if ids.shape[1] < n:
        pad = n - ids.shape[1]
        ids = np.hstack([ids, np.full((len(rows), pad), -1)])
        scores = np.hstack([scores, np.zeros((len(rows), pad))])
        missing = np.hstack([missing, np.ones((len(rows), pad), dtype=bool)])
    return np.where(missing, -1, ids), np.where(missing, 0.0, scores)
