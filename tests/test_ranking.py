"""The evaluation metrics against values computed by hand (definitions: dailyrec/model/ranking.py),
and top_k / best_first against plain stable sorts (dailyrec/model/topk.py)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from dailyrec.core.arrays import PARALLEL_CELLS
from dailyrec.model import ranking as R
from dailyrec.model import topk as T

# Two users, a catalogue of 6 items, K = 3.
#   user 0: truth {1, 4}, recommended [1, 2, 4]  -> hits [1, 0, 1]
#   user 1: truth {5},    recommended [0, 3, -]  -> no hits (the third slot is empty)
RECOMMENDED = np.array([[1, 2, 4], [0, 3, -1]])
TRUTH = sp.csr_matrix((np.ones(3), ([0, 0, 1], [1, 4, 5])), shape=(2, 6))
L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


def test_hits_marks_truth_items_and_never_empty_slots():
    assert R.hits(RECOMMENDED, TRUTH).tolist() == [[True, False, True], [False, False, False]]


def test_metrics_at_every_k_match_hand_computation():
    c = R.curves(R.hits(RECOMMENDED, TRUTH), np.diff(TRUTH.indptr))
    # user 0 per k; user 1 is 0 everywhere, so each mean is user 0's value / 2.
    precision = [1 / 1, 1 / 2, 2 / 3]
    recall = [1 / 2, 1 / 2, 2 / 2]
    ap = [1 / 1, 1 / 2, (1 / 1 + 2 / 3) / 2]  # / min(k, |T|): 1, 2, 2
    idcg = [1 / L2, 1 / L2 + 1 / L3, 1 / L2 + 1 / L3]
    ndcg = [(1 / L2) / idcg[0], (1 / L2) / idcg[1], (1 / L2 + 1 / L4) / idcg[2]]
    assert c["precision"] == pytest.approx([p / 2 for p in precision])
    assert c["recall"] == pytest.approx([r / 2 for r in recall])
    assert c["map"] == pytest.approx([a / 2 for a in ap])
    assert c["ndcg"] == pytest.approx([n / 2 for n in ndcg])
    assert c["ndcg"][2] == pytest.approx(1.5 / (1 + 1 / L3) / 2)  # 0.45986
    assert c["hit_rate"] == pytest.approx([0.5, 0.5, 0.5])


def test_precision_divides_by_k_and_recall_by_truth_size():
    # One user, 5 truth items, 2 slots both hits: precision 1, recall 2/5, NDCG 1 (ideal is 2 hits).
    truth = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 0]]))
    c = R.curves(R.hits(np.array([[0, 1]]), truth), np.array([5]))
    assert c["precision"][1] == 1.0 and c["recall"][1] == pytest.approx(0.4)
    assert c["ndcg"][1] == pytest.approx(1.0) and c["map"][1] == pytest.approx(1.0)


def test_coverage_counts_distinct_items_over_the_catalogue():
    assert R.coverage(RECOMMENDED, 3, 6) == pytest.approx(5 / 6)
    assert R.coverage(RECOMMENDED, 1, 6) == pytest.approx(2 / 6)


def test_top_k_skips_excluded_and_unknown_items_and_breaks_ties_by_index():
    scores = np.array([[0.5, np.nan, 0.9, 0.5, -np.inf],
                       [0.1, 0.2, 0.3, 0.4, 0.5]])
    assert T.top_k(scores, 4).tolist() == [[2, 0, 3, -1], [4, 3, 2, 1]]
    assert T.top_k(scores, 7).tolist() == [[2, 0, 3, -1, -1, -1, -1], [4, 3, 2, 1, 0, -1, -1]]


def test_percentile_ranks_and_expected_percentile_rank():
    scores = np.array([[0.9, 0.5, np.nan, 0.5, 0.1]])  # 4 candidates (NaN = already had)
    ranks = R.percentile_ranks(scores, np.array([0, 0, 0]), np.array([0, 1, 4]))
    # item 0: first -> 0; item 1: one higher, one tie -> (1 + 0.5) / 3; item 4: last -> 1.
    assert ranks.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert R.expected_percentile_rank(ranks, np.array([2.0, 1.0, 1.0])) == pytest.approx(1.5 / 4)


def test_percentile_ranks_of_a_large_batch_are_counted_in_slices_with_the_answer_of_one():
    rng = np.random.default_rng(6)
    scores = np.round(rng.standard_normal((300, 5_000)), 1).astype(np.float32)  # ties
    scores[rng.random(scores.shape) < 0.05] = np.nan
    rows, items = np.sort(rng.integers(0, 300, 2_000)), rng.integers(0, 5_000, 2_000)
    keep = ~np.isnan(scores[rows, items])
    rows, items = rows[keep], items[keep]
    assert len(rows) * scores.shape[1] >= PARALLEL_CELLS
    one = np.concatenate([R.percentile_ranks(scores, rows[j:j + 1], items[j:j + 1])
                          for j in range(0, len(rows), 97)])  # single pairs: no slices
    assert np.array_equal(R.percentile_ranks(scores, rows, items)[::97], one)


def test_an_item_the_model_does_not_know_ranks_after_every_known_item():
    scores = np.array([[0.3, -np.inf, 0.2, -np.inf]])
    # item 1: two candidates higher, tied with item 3 -> (2 + 0.5) / 3
    assert R.percentile_ranks(scores, np.array([0]), np.array([1])).tolist() == \
        pytest.approx([2.5 / 3])


def test_a_large_batch_is_ranked_in_slices_with_the_answer_of_one():
    """top_k splits a batch of PARALLEL_CELLS or more scores into row slices, one per core: the
    same positions as ranking it in one piece (NaN, -inf and ties included)."""
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 50, (301, 10_000)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.2] = np.nan
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[7] = np.nan  # a row with nothing left
    assert scores.size >= PARALLEL_CELLS
    sliced = T.top_k(scores, 25)
    assert np.array_equal(sliced, T._top_k(scores, 25)) and (sliced[7] == -1).all()
    assert np.array_equal(sliced, stable_top_k(scores, 25))


def stable_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """top_k's definition, written plainly: a stable sort of each whole row, best first."""
    b, n = scores.shape
    order = np.argsort(np.where(np.isnan(scores), np.inf, -scores), axis=1, kind="stable")
    top = np.full((b, k), -1, dtype=np.int64)
    top[:, :min(k, n)] = order[:, :k]
    top[:, :min(k, n)][~np.isfinite(np.take_along_axis(scores, order[:, :k], axis=1))] = -1
    return top


def test_top_k_is_the_stable_sort_of_each_row_cut_at_k():
    """Whatever path top_k takes (one row; a floor from every 8th item of a wide row; rows with
    more candidates than that floor expects sorted whole; float32 or float64), its answer is the
    stable descending sort of each row: ties at the k-th place go to the lower item index too."""
    rng = np.random.default_rng(5)
    paths = {"row": 0, "sampled": 0, "heavy": 0}
    for _ in range(600):
        b = 1 if rng.random() < 0.3 else int(rng.integers(2, 40))
        n, k = int(rng.integers(1, 4000)), int(rng.integers(1, 45))
        scores = rng.standard_normal((b, n)).astype(rng.choice([np.float32, np.float64]))
        if rng.random() < 0.5:
            scores = np.round(scores, int(rng.integers(0, 2)))  # ties, at the k-th place too
        if rng.random() < 0.2:
            scores[rng.random(scores.shape) < 0.3] *= -0.0  # -0.0 ties with 0.0
        for value, share in ((np.nan, rng.random()), (-np.inf, rng.random() * 0.3),
                             (np.inf, 0.001)):
            if rng.random() < 0.4:
                scores[rng.random(scores.shape) < share] = value
        if rng.random() < 0.3:
            scores[rng.integers(0, b, int(rng.integers(1, b + 1)))] = 0.0  # users without factors
        paths["row"] += b == 1
        paths["sampled"] += b > 1 and n >= T.SAMPLE_FROM * min(k, n)
        paths["heavy"] += b > 1 and bool(((scores == 0).sum(axis=1) > T.HEAVY * k).any())
        assert np.array_equal(T.top_k(scores, k), stable_top_k(scores, k)), (b, n, k)
    assert min(paths.values()) > 20, paths


def test_most_popular_without_the_excluded_items_is_top_k_of_its_scores():
    """PopularRecommender.recommend_excluding (the session protocol's baseline) gives top_k of its
    dense scores with each row's excluded items NaN, -1 past the catalogue."""
    from dailyrec.model.recommender import PopularRecommender

    rng = np.random.default_rng(3)
    for n_items, n in ((300, 20), (12, 20)):  # a catalogue smaller than n + the context too
        users = sp.random(200, n_items, density=0.05, random_state=4, format="csr")
        popular = PopularRecommender(users)
        exclude = np.where(rng.random((50, 6)) < 0.7,
                           popular.order[rng.integers(0, min(n_items, 30), (50, 6))], -1)
        scores = popular.score(np.arange(50))
        rows, cols = np.nonzero(exclude >= 0)
        scores[rows, exclude[rows, cols]] = np.nan
        assert np.array_equal(popular.recommend_excluding(exclude, n), T.top_k(scores, n))


def test_best_first_is_a_stable_sort_by_row_then_value_descending_nan_last():
    """top_k's candidates and publish's histories are ordered by best_first: for any float32
    values (negatives, both zeros, infinities, NaN, neighbours one ulp apart, repeats) its packed
    sort is the stable argsort of -values within each row (equal values keep their order, NaN
    last), rows ascending; float64 takes np.lexsort, the same order."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal(400).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype=np.float32)
    values = np.concatenate([base, np.nextafter(base[:50], np.float32(np.inf)), base[:50],
                             special, special[::-1]]).astype(np.float32)
    rng.shuffle(values)
    one_row = np.zeros(len(values), dtype=np.int64)
    assert T.best_first(one_row, values).tolist() == \
        np.argsort(-values, kind="stable").tolist()
    rows = np.sort(rng.integers(0, 7, len(values)))
    want = np.lexsort((np.arange(len(values)), -values, rows)).tolist()
    assert T.best_first(rows, values).tolist() == want
    assert T.best_first(rows, values.astype(np.float64)).tolist() == want
