"""The C scan kernels (``_scan.c``) when the install built them, run on several threads.

Without a compiler at install time ``kernels`` is None and callers use torch ops: the
same results, slower (docs/kcenter.md).
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

kernels: types.ModuleType | None
try:
    import sift_worker.selection._scan as kernels
except ImportError:  # pragma: no cover - depends on the build
    kernels = None

MIN_PART_ROWS = 64 * 1024  # smaller parts cost more in thread hand-off than they save


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="sift-scan")


def split(
    p0: int, p1: int, work: Callable[[int, int], int], threads: int, align: int = 1024
) -> list[tuple[int, int]]:
    """``(start, work(start, end))`` for ``align``-ed parts of rows p0..p1, one per
    thread. The kernels release the GIL; the caller's thread takes the first part."""
    parts = max(1, min(threads, (p1 - p0) // MIN_PART_ROWS))
    step = -(-(p1 - p0) // parts // align) * align
    bounds = [(a, min(a + step, p1)) for a in range(p0, p1, step)]
    futures = [(a, _pool().submit(work, a, b)) for a, b in bounds[1:]]
    first = (p0, work(*bounds[0]))
    return [first] + [(a, f.result()) for a, f in futures]


def update_max_dot(x: np.ndarray, q: np.ndarray, maxdot: np.ndarray, threads: int) -> None:
    """``maxdot = max(maxdot, x @ q)`` in one read of ``x`` (float32, C-contiguous)."""
    assert kernels is not None
    n, dim = x.shape

    def work(a: int, b: int) -> int:
        assert kernels is not None
        kernels.f32_update(x, dim, dim, q, None, maxdot, None, 0, a, b)
        return 0

    split(0, n, work, threads)
