"""NumPy helpers for the hot paths.

    distinct(values) -> sorted distinct values     np.unique(values), by sorting
    in_slices(n, work, cells) -> [work(lo, hi)...]   slices of range(n), one per core
    without_huge_pages()                            NumPy's arrays on ordinary pages from now on

NumPy 2.3+ answers np.unique without counts or indices from a hash table, 6-12x slower than a
sort on a day of events and over 100x on 20M mostly distinct integers (18 s against 0.15 s on
this machine): the rules, the split and the window checks count distinct ids by sorting instead.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")
# Below this many cells a thread costs more than it saves (an API request ranks one row).
PARALLEL_CELLS = 2_000_000


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-d array (what np.unique returns)."""
    ordered = np.sort(values, axis=None)
    if len(ordered) < 2:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def repeated(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values that occur more than once in a 1-d array."""
    ordered = np.sort(values, axis=None)
    return distinct(ordered[1:][ordered[1:] == ordered[:-1]])


@cache
def _pool() -> tuple[ThreadPoolExecutor, int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(cores or 1, 8)
    return ThreadPoolExecutor(workers, thread_name_prefix="dailyrec-slices"), workers


def in_slices(n: int, work: Callable[[int, int], T], cells: int) -> list[T]:
    """work(lo, hi) over consecutive slices of range(n) that cover it, in order: one slice per
    core, on threads, when the work touches at least PARALLEL_CELLS cells (NumPy releases the GIL
    in its passes over arrays), else one call. For work whose slices are independent, so the
    answer is the same either way."""
    pool, workers = _pool()
    if workers < 2 or n < 2 or cells < PARALLEL_CELLS:
        return [work(0, n)]
    bounds = np.linspace(0, n, min(workers, n) + 1).astype(np.int64).tolist()
    return list(pool.map(work, bounds[:-1], bounds[1:]))


def without_huge_pages() -> bool | None:
    """From now on NumPy does not ask the kernel for transparent huge pages for its arrays (what
    NUMPY_MADVISE_HUGEPAGE=0 does when NumPy loads; unset, it asks for every array of 4 MB or
    more). Where the kernel's THP defrag setting is `madvise` (Debian's default), the first touch
    of such an array can stall on memory compaction: the stages that read the window make
    hundreds of short-lived arrays of 20M rows, and spent 2-3 s of system time there
    (docs/benchmarks.md, "window_stages"). NUMPY_MADVISE_HUGEPAGE set in the environment wins.
    Returns the setting before, None when it was left alone."""
    if os.environ.get("NUMPY_MADVISE_HUGEPAGE") is not None:
        return None
    from numpy._core.multiarray import _set_madvise_hugepage  # what numpy/__init__.py calls

    return bool(_set_madvise_hugepage(False))
