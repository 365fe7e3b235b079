"""A de-duplicating work queue of run keys, like client-go's.

A key is never processed by two workers at once; a key enqueued while it is being
processed is processed once more afterwards (the change is not lost); a burst of
events for one key collapses into one reconcile. Delayed retries (backoff) keep one
timer per key, the earliest wins. ``idle`` is set while nothing is queued or being
processed (Events wait for it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("sift.operator")

K = TypeVar("K")


class WorkQueue(Generic[K]):
    def __init__(self, handler: Callable[[K], Awaitable[None]], *, workers: int = 8) -> None:
        self._handler = handler
        self._workers = workers
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def start(self) -> None:
        for i in range(self._workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"sift-reconcile-{i}"))

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.idle.set()  # nothing will be processed any more: nothing to wait for

    def __len__(self) -> int:
        return len(self._queued) + len(self._active)

    def add(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            self.idle.clear()

    def add_after(self, key: K, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def forget(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile of %s failed unexpectedly; retrying", key)
                self.add_after(key, 5.0)
            finally:
                self._active.discard(key)
                self.processed += 1
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif not self._queued and not self._active:
                self.idle.set()
