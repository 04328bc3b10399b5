"""One interface for every model that ranks items: what evaluate scores, what publish writes to
Redis, and what the MLflow pyfunc returns all come from a `Recommender`.

    Recommender.score(rows)                      dense (len(rows), n_items) float32 scores
    Recommender.recommend(rows, liked, n, filter_liked) -> (item positions, scores), best first

    ALSRecommender      a fitted ALS model (factors); recommend() goes through implicit's batch
                        recommend, which publish needs at full speed
    PopularRecommender  items by how many users have them: the baseline and the fallback list
    MappedRecommender   a model with its own id maps (the published one) scored on another catalogue

    top_n(bundle, user_ids, n)   long-format lists for any user id (known: ALS, others: most popular)

Positions index the recommender's catalogue; -1 marks an empty slot (fewer candidates than n).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dailyrec.model.topk import top_k
from dailyrec.model.artifacts import ModelBundle

COLUMNS = ["user_id", "rank", "item_id", "score", "source"]


class Recommender(ABC):
    """Scores the catalogue for rows (users) of the matrix the recommender was built on."""

    n_items: int

    @abstractmethod
    def score(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_items) float32 scores, higher is better; -inf for items it cannot rank."""

    def recommend(self, rows: np.ndarray, liked: sp.csr_matrix | None, n: int,
                  filter_liked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The top n of each row, leaving out what `liked` (len(rows) x n_items) holds when
        filter_liked: (item positions, scores), -1 / 0 where there is no candidate."""
        scores = self.score(np.asarray(rows)).astype(np.float32, copy=True)
        if filter_liked and liked is not None:
            had = sp.csr_matrix(liked).tocoo()
            scores[had.row, had.col] = np.nan
        ids = top_k(scores, n)
        picked = np.take_along_axis(scores, np.maximum(ids, 0), axis=1)
        return ids, np.where(ids >= 0, picked, 0).astype(np.float32)


class ALSRecommender(Recommender):
    """A fitted ALS model: score = user factors . item factors."""

    def __init__(self, model, user_items: sp.csr_matrix | None = None):
        self.model = model  # implicit.cpu.als.AlternatingLeastSquares
        self.user_factors = np.asarray(model.user_factors)
        self.item_factors = np.asarray(model.item_factors)
        self.user_items = user_items
        self.n_items = len(self.item_factors)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> "ALSRecommender":
        return cls(bundle.model, bundle.user_items)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.user_factors[rows] @ self.item_factors.T, dtype=np.float32)

    def recommend(self, rows: np.ndarray, liked: sp.csr_matrix | None, n: int,
                  filter_liked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """implicit's batch recommend (the same lists as the base class, several times faster);
        `liked` defaults to the rows of the matrix the model was fitted on."""
        rows = np.asarray(rows)
        liked = self.user_items[rows] if liked is None else sp.csr_matrix(liked)
        return _implicit_recommend(self.model, rows, liked, n, filter_liked)


def users_per_item(user_items: sp.csr_matrix) -> np.ndarray:
    return np.bincount(sp.csr_matrix(user_items).indices, minlength=user_items.shape[1])


class PopularRecommender(Recommender):
    """Items by how many distinct users have them; ties go to the lower item position."""

    def __init__(self, user_items: sp.csr_matrix):
        self.counts = users_per_item(user_items)
        self.n_users, self.n_items = user_items.shape
        order = np.argsort(-self.counts, kind="stable")
        # Unique ranking scores (no ties), exact in float32 up to 2**24 items.
        dtype = np.float32 if self.n_items < 2**24 else np.float64
        self.ranks = np.empty(self.n_items, dtype=dtype)
        self.ranks[order] = np.arange(self.n_items, 0, -1, dtype=dtype)
        self.order = order

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.ranks, (len(rows), self.n_items)).copy()

    def recommend_excluding(self, exclude: np.ndarray, n: int) -> np.ndarray:
        """Per row of exclude ((m, w) positions, -1 = none), the first n items of the order that
        it does not hold, -1 past the catalogue: top_k of score() with those items NaN, without
        the (m, n_items) scores (a row's n are among the first n + w items of the order)."""
        head = self.order[:min(self.n_items, n + exclude.shape[1])]
        taken = (head[None, :, None] == exclude[:, None, :]).any(axis=2)
        first = np.argsort(taken, axis=1, kind="stable")[:, :n]  # the free ones first, in order
        top = head[first]
        top[np.take_along_axis(taken, first, axis=1)] = -1
        return np.hstack([top, np.full((len(top), n - top.shape[1]), -1, dtype=top.dtype)])

    def top_list(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The fallback list: (1, n) positions and scores; score = the share of users who have the
        item (what the API shows), -1 past the items anyone has."""
        order = self.order[:n]
        order = order[self.counts[order] > 0]
        positions = np.full((1, n), -1, dtype=np.int64)
        scores = np.zeros((1, n), dtype=np.float32)
        positions[0, :len(order)] = order
        scores[0, :len(order)] = self.counts[order] / max(self.n_users, 1)
        return positions, scores


class MappedRecommender(Recommender):
    """A bundle with its own id maps, scored over other users and another catalogue (evaluate's
    published baseline): users it does not know get its most-popular order, items it does not know
    are -inf (ranked last, never recommended)."""

    def __init__(self, bundle: ModelBundle, user_ids: np.ndarray, item_ids: np.ndarray):
        self.users = pd.Index(bundle.user_ids.astype(object)).get_indexer(user_ids.astype(object))
        items = pd.Index(bundle.item_ids.astype(object)).get_indexer(item_ids.astype(object))
        self.known_items = items >= 0
        self.n_items = len(items)
        self.user_factors = np.asarray(bundle.model.user_factors)
        self.item_factors = np.asarray(bundle.model.item_factors)[items[self.known_items]]
        self.popular = PopularRecommender(bundle.user_items).ranks[items[self.known_items]]

    def score(self, rows: np.ndarray) -> np.ndarray:
        mine = self.users[rows]
        known = mine >= 0
        # Written in place where it can be: at evaluate's batch size every extra array of scores
        # (allocated, first touched, copied) costs more than the multiply itself.
        block = np.empty((len(rows), len(self.item_factors)), dtype=np.float32)
        if known.all():
            np.matmul(self.user_factors[mine], self.item_factors.T, out=block)
        else:
            block[known] = self.user_factors[mine[known]] @ self.item_factors.T
            block[~known] = self.popular
        if self.known_items.all():  # the usual day: it knows every item of the split
            return block
        out = np.full((len(rows), self.n_items), -np.inf, dtype=np.float32)
        out[:, self.known_items] = block
        return out


# Users are scored in tiers by how many items they have: a tier asks implicit for top_n + its cap.
# Users with more items than the last cap go through implicit's own (per-user) filter.
OVERFETCH_TIERS = (8, 16, 32, 64, 128)


def _implicit_recommend(model, rows: np.ndarray, liked: sp.csr_matrix, top_n: int,
                        filter_liked: bool) -> tuple[np.ndarray, np.ndarray]:
    """(len(rows), top_n) item positions (-1 where there is no candidate) and scores.

    implicit's batch recommend filters what users have with a Python loop over users (one
    sparse-row slice each), which caps it near 10k users/s. So users with up to 128 items are
    scored unfiltered, asking for top_n + (their tier's cap) items, and their own items are then
    dropped with one vectorised membership test; only heavier users take implicit's filter.
    Either way the lists are the same.
    """
    n_items = liked.shape[1]
    ids = np.full((len(rows), top_n), -1, dtype=np.int64)
    scores = np.zeros((len(rows), top_n), dtype=np.float32)
    if len(rows) == 0:
        return ids, scores
    liked = liked.copy()
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
        got_ids, got_scores = model.recommend(
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
    als = ALSRecommender.from_bundle(bundle)
    known_rows = rows[known]
    n_items = len(bundle.item_ids)
    for start in range(0, len(known_rows), batch_size):  # batches of users, not single users
        batch = known_rows[start:start + batch_size]
        ids, scores = als.recommend(batch, None, min(n, n_items), exclude_known)
        frames.append(_long(users[known].to_numpy()[start:start + batch_size], ids, scores,
                            bundle, "personalized"))
    unknown = users[~known].to_numpy()
    if len(unknown):
        order, shares = PopularRecommender(bundle.user_items).top_list(min(n, n_items))
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
