"""The C scan kernels (``_scan.c``) when the install built them, run on several threads.

Without a compiler at install time ``kernels`` is None and callers use torch ops: the
same results, slower (docs/kcenter.md).
"""

from __future__ import annotations

import functools
import os
import threading
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
PIECES = 8  # pieces per thread: the last one bounds the wait for the slowest thread


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="sift-scan")


def split(
    p0: int, p1: int, work: Callable[[int, int], int], threads: int, align: int = 1024
) -> list[tuple[int, int]]:
    """``(start, work(start, end))`` for ``align``-ed pieces of rows p0..p1, in order.

    ``threads`` threads (the caller's among them) take pieces from a shared queue,
    ``PIECES`` per thread, so a core briefly taken by another process delays a piece, not
    half the scan. The kernels release the GIL.
    """
    parts = max(1, min(threads, (p1 - p0) // MIN_PART_ROWS))
    if parts == 1:
        return [(p0, work(p0, p1))]
    step = -(-(p1 - p0) // (PIECES * parts) // align) * align
    pieces = iter([(a, min(a + step, p1)) for a in range(p0, p1, step)])
    lock = threading.Lock()

    def drain() -> list[tuple[int, int]]:
        done: list[tuple[int, int]] = []
        while True:
            with lock:
                piece = next(pieces, None)
            if piece is None:
                return done
            done.append((piece[0], work(*piece)))

    futures = [_pool().submit(drain) for _ in range(parts - 1)]
    out = drain()
    for f in futures:
        out.extend(f.result())
    return sorted(out)


def update_max_dot(x: np.ndarray, q: np.ndarray, maxdot: np.ndarray, threads: int) -> None:
    """``maxdot = max(maxdot, x @ q)`` in one read of ``x`` (float32, C-contiguous)."""
    assert kernels is not None
    n, dim = x.shape

    def work(a: int, b: int) -> int:
        assert kernels is not None
        kernels.f32_update(x, dim, dim, q, None, maxdot, None, 0, a, b)
        return 0

    split(0, n, work, threads)
