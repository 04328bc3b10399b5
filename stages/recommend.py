"""Top-N lists from a saved model: what publish writes to Redis and the MLflow pyfunc returns.

Known users get implicit's batch recommend, leaving out the items they already have; users the model
does not know get the most-popular list (items by number of users, ties by item order, scored by
the share of users who have them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.artifacts import ModelBundle

COLUMNS = ["user_id", "rank", "item_id", "score", "source"]


def popular_items(user_items, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fallback list: items by how many users have them (ties by position), score = share."""
    n_users, n_items = user_items.shape
    users_per_item = np.bincount(user_items.indices, minlength=n_items)
    order = np.argsort(-users_per_item, kind="stable")[:top_n]
    order = order[users_per_item[order] > 0]
    positions = np.full((1, top_n), -1, dtype=np.int64)
    scores = np.zeros((1, top_n), dtype=np.float32)
    positions[0, : len(order)] = order
    scores[0, : len(order)] = users_per_item[order] / max(n_users, 1)
    return positions, scores


# Users are scored in tiers by how many items they have: a tier asks implicit for top_n + its cap.
# Users with more items than the last cap go through implicit's own (per-user) filter.
OVERFETCH_TIERS = (8, 32, 128)


def recommend(bundle: ModelBundle, rows: np.ndarray, top_n: int,
              filter_liked: bool) -> tuple[np.ndarray, np.ndarray]:
    """(len(rows), top_n) item positions (-1 where there is no candidate) and scores.

    implicit's batch recommend filters what users have with a Python loop over users (one
    sparse-row slice each), which caps it near 10k users/s. So users with up to 128 items are
    scored unfiltered, asking for top_n + (their tier's cap) items, and their own items are then
    dropped with one vectorised membership test; only heavier users take implicit's filter.
    Either way the lists are the same.
    """
    n_items = len(bundle.item_ids)
    rows = np.asarray(rows)
    ids = np.full((len(rows), top_n), -1, dtype=np.int64)
    scores = np.zeros((len(rows), top_n), dtype=np.float32)
    if len(rows) == 0:
        return ids, scores
    liked = bundle.user_items[rows]
    liked.sort_indices()
    counts = np.diff(liked.indptr)
    if filter_liked:
        tier = np.searchsorted(OVERFETCH_TIERS, counts)  # len(OVERFETCH_TIERS): too many items
        caps = list(OVERFETCH_TIERS) + [None]
    else:
        tier, caps = np.zeros(len(rows), dtype=np.int64), [0]
    for t, cap in enumerate(caps):
        part = np.flatnonzero(tier == t)
        if len(part) == 0:
            continue
        part_liked = liked[part]
        n = min(top_n + (cap or 0), n_items)
        got_ids, got_scores = bundle.model.recommend(
            rows[part], part_liked, N=n, filter_already_liked_items=filter_liked and cap is None)
        got_ids = np.asarray(got_ids, dtype=np.int64).reshape(len(part), n)
        got_scores = np.asarray(got_scores, dtype=np.float32).reshape(len(part), n)
        # implicit pads with the filtered items, scored -FLT_MAX, when too few candidates remain
        keep = got_scores > np.finfo(np.float32).min
        if cap:
            keep &= ~_has(part_liked, got_ids, n_items)
        # the first top_n kept candidates of each row, in score order
        first = np.argsort(~keep, axis=1, kind="stable")[:, :top_n]
        got_ids = np.take_along_axis(got_ids, first, axis=1)
        got_scores = np.take_along_axis(got_scores, first, axis=1)
        got_ids[~np.take_along_axis(keep, first, axis=1)] = -1
        width = got_ids.shape[1]
        ids[part, :width] = got_ids
        scores[part, :width] = np.where(got_ids >= 0, got_scores, 0)
    return ids, scores


def _has(user_items, candidates: np.ndarray, n_items: int) -> np.ndarray:
    """candidates[i, j] in row i of user_items (CSR, sorted indices), for every i, j at once."""
    row_of = np.repeat(np.arange(user_items.shape[0], dtype=np.int64), np.diff(user_items.indptr))
    owned = row_of * n_items + user_items.indices  # sorted: rows ascending, indices sorted in rows
    wanted = np.arange(len(candidates), dtype=np.int64)[:, None] * n_items + candidates
    at = np.minimum(np.searchsorted(owned, wanted), max(len(owned) - 1, 0))
    return (owned[at] == wanted) if len(owned) else np.zeros(wanted.shape, dtype=bool)



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
        ids, scores = recommend(bundle, batch, min(n, n_items), exclude_known)
        frames.append(_long(users[known].to_numpy()[start:start + batch_size], ids, scores,
                            bundle, "personalized"))
    unknown = users[~known].to_numpy()
    if len(unknown):
        order, shares = popular_items(bundle.user_items, min(n, n_items))
        ids = np.tile(order, (len(unknown), 1))
        scores = np.tile(shares, (len(unknown), 1))
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
    valid = ids >= 0
    rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)
    user = np.broadcast_to(users[:, None], ids.shape)
    return pd.DataFrame({
        "user_id": pd.array(user[valid], dtype="str"),
        "rank": rank[valid].astype(np.int64),
        "item_id": pd.array(bundle.item_ids[ids[valid]].astype(object), dtype="str"),
        "score": scores[valid].astype(np.float32),
        "source": source,
    })
