"""Fold-in: factors for a visitor the model never saw, from a few items, with the model's item
factors fixed (the least-squares step of ALS for one user: what implicit's `recalculate_user`
solves), the scores they give, and which of the visitor's items explain each score (implicit's
`explain`).

For a visitor with items j (confidence c_j > 0) and item factors Y:

    A = YᵀY + λI + Σ_j (c_j − 1) y_j y_jᵀ        b = Σ_j c_j y_j        x = A⁻¹ b
    score(i) = y_iᵀ x = Σ_j c_j · y_iᵀ A⁻¹ y_j    (the j-th term is item j's contribution)

Everything is batched over visitors: items come as an (m, k) array padded with -1, and the m
systems are solved at once with NumPy's stacked `solve` (no Python loop over visitors). The API
folds in one visitor per request (m = 1); evaluate's session protocol thousands per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dailyrec.model.topk import top_k


@dataclass
class Solved:
    """m visitors' factors, and what explaining their scores needs."""

    factors: np.ndarray  # (m, f) float64
    systems: np.ndarray  # (m, f, f) float64: A per visitor
    items: np.ndarray  # (m, k) int64, -1 = padding
    confidence: np.ndarray  # (m, k) float64, 0 at padding


class FoldIn:
    def __init__(self, item_factors: np.ndarray, regularization: float):
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        f = self.item_factors.shape[1]
        # YᵀY + λI, once per model; in float32 as implicit computes it (4x faster than float64)
        gram = self.item_factors.T @ self.item_factors
        self.gram = gram.astype(np.float64) + regularization * np.eye(f)
        self.regularization = float(regularization)

    @property
    def n_items(self) -> int:
        return self.item_factors.shape[0]

    def solve(self, items: np.ndarray, confidence: np.ndarray | float) -> Solved:
        """Factors for m visitors from their items ((m, k), -1 = none) and confidences (an
        (m, k) array, or one value for every item)."""
        items = np.atleast_2d(np.asarray(items, dtype=np.int64))
        used = items >= 0
        c = np.where(used, np.broadcast_to(confidence, items.shape), 0.0).astype(np.float64)
        y = self.item_factors[np.where(used, items, 0)].astype(np.float64) * used[..., None]
        # Σ_j (c_j − 1) y_j y_jᵀ and Σ_j c_j y_j as stacked matrix products (BLAS), not einsum
        systems = self.gram + np.swapaxes(y * (c - used)[..., None], 1, 2) @ y
        rhs = (c[:, None, :] @ y)[:, 0, :]
        factors = np.linalg.solve(systems, rhs[..., None])[..., 0]
        return Solved(factors=factors, systems=systems, items=items, confidence=c)

    def scores(self, solved: Solved) -> np.ndarray:
        """(m, n_items) float32 scores."""
        x = solved.factors.astype(np.float32)
        if len(x) == 1:  # one visitor (a request): a matrix-vector product over row-major Y
            return (self.item_factors @ x[0])[None, :]
        return x @ self.item_factors.T

    def recommend(self, solved: Solved, n: int, exclude: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top n (positions, scores) per visitor, best first; `exclude` ((m, k) positions, -1 =
        none; by default the visitor's own items) never appear; missing slots are -1 / 0."""
        scores = self.scores(solved)
        exclude = solved.items if exclude is None else np.atleast_2d(exclude)
        rows, cols = np.nonzero(exclude >= 0)
        scores[rows, exclude[rows, cols]] = np.nan
        positions = top_k(scores, n)  # -1 where no item is left
        picked = np.take_along_axis(scores, np.maximum(positions, 0), axis=1)
        return positions, np.where(positions < 0, 0.0, picked)

    def explain(self, solved: Solved, recommended: np.ndarray) -> np.ndarray:
        """(m, r, k) contributions of each visitor's k items to each of its r recommended items'
        scores (they sum to the score); 0 at padding."""
        recommended = np.atleast_2d(recommended)
        used = solved.items >= 0
        y = self.item_factors[np.where(used, solved.items, 0)].astype(np.float64) * used[..., None]
        # A⁻¹ y_j for every item j of the visitor: one stacked solve
        weighted = np.linalg.solve(solved.systems, np.swapaxes(y, 1, 2))  # (m, f, k)
        targets = self.item_factors[np.maximum(recommended, 0)].astype(np.float64)  # (m, r, f)
        out = np.einsum("mrf,mfk->mrk", targets, weighted) * solved.confidence[:, None, :]
        out[recommended < 0] = 0.0
        return out

