"""Top-N lists from a saved model bundle: the MLflow pyfunc uses this (and publish may).

Known users get implicit's batch recommend, leaving out the items they already have; users the model
does not know get the most-popular list (items by number of users, ties by item id order).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.artifacts import ModelBundle

COLUMNS = ["user_id", "rank", "item_id", "score", "source"]


def popular_items(bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, user counts), most popular first; ties keep the item order."""
    counts = np.diff(bundle.user_items.tocsc().indptr)
    order = np.argsort(-counts, kind="stable")
    return order, counts[order]


def top_n(bundle: ModelBundle, user_ids, n: int = 20, exclude_known: bool = True,
          batch_size: int = 10_000) -> pd.DataFrame:
    """One row per (user, rank): user_id, rank (1..n), item_id, score, source.

    source is "personalized" for users in the model and "fallback" (most popular) for the others.
    A user may get fewer than n rows when the catalogue minus their items is smaller than n.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    users = pd.Series(np.asarray(user_ids, dtype=object), dtype="str")
    index = pd.Index(bundle.user_ids.astype(object))
    rows = index.get_indexer(users)
    known = rows >= 0
    frames = []
    known_rows = rows[known]
    n_items = len(bundle.item_ids)
    for start in range(0, len(known_rows), batch_size):  # batches of users, not single users
        batch = known_rows[start:start + batch_size]
        ids, scores = bundle.model.recommend(batch, bundle.user_items[batch], N=min(n, n_items),
                                             filter_already_liked_items=exclude_known)
        ids, scores = np.atleast_2d(ids), np.atleast_2d(scores)
        frames.append(_long(users[known].to_numpy()[start:start + batch_size], ids, scores,
                            bundle, "personalized"))
    unknown = users[~known].to_numpy()
    if len(unknown):
        order, counts = popular_items(bundle)
        ids = np.tile(order[:n], (len(unknown), 1))
        scores = np.tile(counts[:n].astype(np.float32), (len(unknown), 1))
        frames.append(_long(unknown, ids, scores, bundle, "fallback"))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(COLUMNS, ["str", "int64", "str", "float32", "str"])})
    out = pd.concat(frames, ignore_index=True)
    # Back in the order the users were asked for.
    position = pd.Series(np.arange(len(users)), index=users.to_numpy()).groupby(level=0).first()
    out["_order"] = position.reindex(out["user_id"]).to_numpy()
    return out.sort_values(["_order", "rank"], kind="stable").drop(columns="_order") \
        .reset_index(drop=True)


def _long(users: np.ndarray, ids: np.ndarray, scores: np.ndarray, bundle: ModelBundle,
          source: str) -> pd.DataFrame:
    valid = (ids >= 0) & np.isfinite(scores)
    rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)
    user = np.broadcast_to(users[:, None], ids.shape)
    return pd.DataFrame({
        "user_id": pd.array(user[valid], dtype="str"),
        "rank": rank[valid].astype(np.int64),
        "item_id": pd.array(bundle.item_ids[ids[valid]].astype(object), dtype="str"),
        "score": scores[valid].astype(np.float32),
        "source": source,
    })
