"""dailyrec.core.arrays: np.unique's answers by sorting (NumPy's hash-table unique is far slower)."""

from __future__ import annotations

import numpy as np
import pytest

from dailyrec.core.arrays import distinct, repeated


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


def test_in_slices_covers_the_range_in_order_on_threads_only_when_large():
    import threading

    from dailyrec.core import arrays

    seen = []

    def work(lo, hi):
        seen.append(threading.current_thread().name)
        return (lo, hi)

    assert arrays.in_slices(10, work, arrays.PARALLEL_CELLS - 1) == [(0, 10)]
    assert seen == [threading.current_thread().name]  # small: one call, on this thread
    for n in (2, 3, 1001):
        slices = arrays.in_slices(n, work, arrays.PARALLEL_CELLS)
        assert slices[0][0] == 0 and slices[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:])) and len(slices) > 1
    assert any(name.startswith("dailyrec-slices") for name in seen)


@pytest.mark.parametrize("env, after", [(None, False), ("1", True), ("0", False)])
def test_without_huge_pages_turns_numpys_request_off_unless_the_environment_says(env, after):
    """The window stages call arrays.without_huge_pages(): NumPy's arrays on ordinary pages from
    then on, unless NUMPY_MADVISE_HUGEPAGE says otherwise (a fresh process each: it is global)."""
    import os
    import subprocess
    import sys

    code = ("from dailyrec.core import arrays; arrays.without_huge_pages(); "
            "from numpy._core.multiarray import _set_madvise_hugepage as setting; "
            "print(setting(True))")  # returns the setting it replaces
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    if env is not None:
        environ["NUMPY_MADVISE_HUGEPAGE"] = env
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == str(after)
