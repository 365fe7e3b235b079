"""Objects read ahead of the decoders, in the order they will ask for them.

A fetch waits on the network (and on a storage server that may pause while it lists a
page); a decode waits on a core. With the two in one thread, every slow answer stalls a
decoder, and hiding the latency takes more decode threads than cores. Here a few fetch
threads read ahead of the decoders by a bounded number of objects and bytes, so the
decoders find most objects in memory, and the cores stay busy through a slow answer.

Reads fail the same way they would without it: an object's error is raised when (and
only if) that object is asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

DEFAULT_AHEAD = 256  # objects fetched and not yet taken, at most
DEFAULT_MAX_BYTES = 64 << 20  # and their bytes (one more object may be in flight per thread)


class Prefetcher:
    """``read_bytes(name)`` from objects fetched ahead along ``names``; thread-safe.

    A name asked for before the fetchers reached it is read at once and skipped by them.
    ``close()`` stops the fetchers (pending reads are dropped).
    """

    def __init__(
        self,
        read: Callable[[str], bytes],
        names: Iterable[str],
        *,
        workers: int,
        ahead: int = DEFAULT_AHEAD,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._read = read
        self._ahead = max(1, ahead)
        self._max_bytes = max(1, max_bytes)
        self._pending: dict[str, Future[bytes]] = {}
        self._sizes: dict[str, int] = {}  # fetched, not yet taken
        self._buffered = 0
        self._workers = max(1, workers)
        self._in_flight = 0  # submitted reads not finished: at most one per worker
        self._taken: set[str] = set()  # read directly before the fetchers got there
        self._closed = False
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="prefetch")
        self._feeder = threading.Thread(
            target=self._feed, args=(names,), name="prefetch-feed", daemon=True
        )
        self._feeder.start()

    def read_bytes(self, name: str) -> bytes:
        with self._cond:
            future = self._pending.pop(name, None)
            if future is None:
                self._taken.add(name)
            else:
                self._buffered -= self._sizes.pop(name, 0)
                self._cond.notify_all()  # a slot is free
        if future is None:
            return self._read(name)
        return future.result()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._sizes.clear()
            self._cond.notify_all()
        # reads in flight finish on their own and are dropped; the feeder may be waiting
        # on a listing page, which ends it (it is a daemon thread either way)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._feeder.join(timeout=1.0)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the fetchers' side -------------------------------------------------------------

    def _feed(self, names: Iterable[str]) -> None:
        try:
            for name in names:
                with self._cond:
                    while not self._closed and (
                        len(self._pending) >= self._ahead
                        or self._buffered >= self._max_bytes
                        or self._in_flight >= self._workers
                    ):
                        self._cond.wait()
                    if self._closed:
                        return
                    if name in self._taken:  # the decoders were faster
                        self._taken.discard(name)
                        continue
                    if name in self._pending:  # asked twice: the second read goes direct
                        continue
                    future = self._pool.submit(self._read, name)
                    self._pending[name] = future
                    self._in_flight += 1
                future.add_done_callback(partial(self._fetched, name))
        except Exception:  # the listing failed: the decoders read (and raise) themselves
            return

    def _fetched(self, name: str, future: Future[bytes]) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
            if future.cancelled() or future.exception() is not None:
                return
            if self._pending.get(name) is future:  # not taken yet: it holds memory now
                size = len(future.result())
                self._sizes[name] = size
                self._buffered += size
