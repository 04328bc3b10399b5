"""dailyrec.model.foldin against implicit itself: the batched least-squares step is implicit's
recalculate_user, and the contributions are implicit's explain, for every visitor of a batch."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dailyrec.model.foldin import FoldIn


def test_batched_fold_in_and_explain_are_implicits():
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    matrix = sp.random(300, 120, density=0.05, random_state=1, format="csr", dtype=np.float32)
    matrix.data = 1 + 5 * matrix.data  # confidences > 1, varied
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, regularization=0.1, iterations=5,
                                        random_state=1, num_threads=1)
        model.fit(matrix, show_progress=False)
    fold = FoldIn(model.item_factors, 0.1)
    users = [3, 7, 11, 250]
    width = max(matrix[u].nnz for u in users) + 2  # padding must not matter
    items = np.full((len(users), width), -1)
    confidence = np.zeros((len(users), width))
    for row, u in enumerate(users):  # building the reference inputs
        items[row, :matrix[u].nnz] = matrix[u].indices
        confidence[row, :matrix[u].nnz] = matrix[u].data
    solved = fold.solve(items, confidence)
    target = np.array([[5, 60]] * len(users))
    contributions = fold.explain(solved, target)
    positions, scores = fold.recommend(solved, 10)
    for row, u in enumerate(users):
        assert np.allclose(solved.factors[row], model.recalculate_user(u, matrix[u]), atol=1e-5)
        for k, item in enumerate(target[row]):
            score, parts, _ = model.explain(u, matrix, itemid=int(item))
            mine = dict(zip(items[row][items[row] >= 0].tolist(),
                            contributions[row, k][items[row] >= 0]))
            assert np.isclose(contributions[row, k].sum(), score, atol=1e-5)
            assert all(np.isclose(mine[j], c, atol=1e-5) for j, c in parts)
        # recommend: the best-scored items the visitor does not have, best first
        full = model.item_factors @ solved.factors[row].astype(np.float32)
        full[matrix[u].indices] = -np.inf
        assert positions[row].tolist() == np.argsort(-full, kind="stable")[:10].tolist()
        assert np.allclose(scores[row], full[positions[row]], atol=1e-5)
    one = fold.solve(items[:1], confidence[:1])  # a request: one visitor, the matvec path
    assert np.allclose(fold.scores(one)[0], fold.scores(solved)[0], atol=1e-5)
