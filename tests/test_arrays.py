"""dailyrec.arrays: np.unique's answers by sorting (NumPy's hash-table unique is far slower)."""

from __future__ import annotations

import numpy as np
import pytest

from dailyrec.arrays import distinct, repeated


@pytest.mark.parametrize("values", [
    np.array([], dtype=np.int64), np.array([7]), np.array([3, 3, 3]),
    np.random.default_rng(1).integers(-50, 50, 1000),
    np.random.default_rng(2).integers(0, 2**63, 5000, dtype=np.uint64),
    np.random.default_rng(3).integers(0, 2**20, 100_000).astype(np.int32)])
def test_distinct_and_repeated_are_what_np_unique_says(values):
    expected, counts = np.unique(values, return_counts=True)
    assert np.array_equal(distinct(values), expected)
    assert distinct(values).dtype == values.dtype
    assert np.array_equal(repeated(values), expected[counts > 1])
