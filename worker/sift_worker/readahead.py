"""Images fetched ahead of the decoders by one thread that drives libcurl's multi interface.

With a fetch in every decode thread, each object costs a wake-up of its own thread, a
GIL hand-off and a context switch, and on a busy core those cost more than the
transfer: 5,000 signed GETs from s3rver on one core took 0.5 to 0.6 ms of worker CPU an
object from 7 threads, 0.3 ms from one thread driving them all through libcurl's multi
interface. Here one thread runs up to ``transfers`` GETs at once through a
``CurlMulti``, in the order the decoders will ask for the objects
(:meth:`ReadAhead.want`), at most ``ahead`` objects and ``max_held`` bytes ahead of
them; a decoder usually finds its object in memory and does not wait at all. At a
bound the thread sleeps until there is room for ``REFILL`` objects, then starts a
batch: one wake-up for many objects, not one per object. For the same reason, while
the next ``LOW_WATER`` objects the decoders will take are ready it naps ``NAP_S``
instead of waking for each socket that turns readable: the kernel holds the bodies
meanwhile, and one wake-up reads several (10,000 wake-ups for 5,000 objects became
1,000-1,500, the thread's CPU 2.4-3.3 s became 1.2-1.9 s, and the decoders on the same
core lost less time).

Only the first attempt is made here, and only a complete 2xx answer is kept. Anything
else (a refused host, a signing error, a timeout, a 404, a 5xx, a body over the cap)
makes :meth:`ReadAhead.take` answer None, and the caller reads the object through the
:class:`~sift_worker.fetch.Fetcher` as it would without read-ahead: its retries, URL
refresh, egress refusals, counters and messages are the same either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import deque
from collections.abc import Callable

import pycurl

from sift_worker.connections import Exchange
from sift_worker.fetch import Fetcher
from sift_worker.storage.base import SignedURL

__all__ = ["ReadAhead"]

log = logging.getLogger("sift.readahead")

TRANSFERS = 16  # GETs in flight at once
AHEAD = 128  # objects started and not yet taken, at most
REFILL = 32  # once at a bound, GETs start again when there is room for this many
MAX_HELD = 64 << 20  # bytes fetched and not yet taken; no new GET starts above it
LOW_WATER = 16  # with the next this many objects ready for the decoders, the thread naps
NAP_S = 0.02  # ... this long, while the sockets fill, then reads them all at once
_IDLE_WAIT_MS = 1000  # the longest sleep with nothing to do (a want or a take wakes it)
_NO_SOCKET_WAIT_MS = 10  # libcurl is busy without a socket to wait on (connecting)


class _Entry:
    __slots__ = ("body", "done", "size")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: bytes | None = None  # None: the caller reads it itself
        self.size = 0


class ReadAhead:
    """``take(name)`` objects that were fetched ahead along ``want(name)``; thread-safe.

    ``sign`` gives a GET URL for a name (the run's signer). Names are wanted in the
    order they will be taken; a name taken before its GET started, or wanted twice, is
    simply answered None (read it directly). The thread starts with the first want and
    stops at :meth:`close`, which answers every waiting :meth:`take` with None.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        sign: Callable[[str], SignedURL],
        *,
        transfers: int = TRANSFERS,
        ahead: int = AHEAD,
        max_held: int = MAX_HELD,
    ) -> None:
        self._fetcher = fetcher
        self._sign = sign
        self.transfers = max(1, transfers)
        self.ahead = max(1, ahead)
        self.max_held = max(1, max_held)
        self._lock = threading.Lock()
        self._wanted: deque[str] = deque()  # not started, in order
        self._waiting: set[str] = set()  # the names in _wanted
        self._entries: dict[str, _Entry] = {}  # started, not yet taken
        self._held = 0  # bytes of finished entries not yet taken
        self._closed = threading.Event()  # close(), or the driver stopped; ends a nap at once
        self._full = False  # at a bound: wait for room for a batch (then start it at once)
        self._batch = max(1, min(REFILL, self.ahead // 2))
        self.taken = self.waited = self.direct = 0  # counts, logged at close
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- the decoders' side -------------------------------------------------------------

    def want(self, name: str) -> None:
        """``name`` will be taken soon, after the names wanted before it."""
        with self._lock:
            if self._closed.is_set() or name in self._waiting or name in self._entries:
                return
            self._wanted.append(name)
            self._waiting.add(name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="readahead", daemon=True)
                self._thread.start()
        self._wake()

    def take(self, name: str) -> bytes | None:
        """The object's body, waiting for its GET if it is under way; None: read it directly."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                if name in self._waiting:  # not started yet: the caller is quicker
                    self._waiting.discard(name)
                    self._wanted.remove(name)
                self.direct += 1
                return None
        if not entry.done.is_set():
            self.waited += 1
            entry.done.wait()
        with self._lock:
            if self._entries.get(name) is entry:
                del self._entries[name]
            self._held -= entry.size
            refill = self._full and self._has_room()
            if entry.body is None:
                self.direct += 1
            else:
                self.taken += 1
        if refill:
            self._wake()  # the driver waits for room: start the next batch
        return entry.body

    def close(self) -> None:
        """Stop the thread and drop what was not taken; waiting takes answer None."""
        with self._lock:
            self._closed.set()
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join()
            log.debug(
                "read ahead: %d objects taken (%d waited for), %d read directly",
                self.taken,
                self.waited,
                self.direct,
            )
        with self._lock:
            for entry in self._entries.values():
                entry.done.set()
            self._entries.clear()
            self._wanted.clear()
            self._waiting.clear()
        wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
        if wake_r >= 0:  # not closed before
            os.close(wake_r)
            os.close(wake_w)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the driver thread --------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        # full: a wake-up is pending anyway
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        multi = pycurl.CurlMulti()
        idle: list[pycurl.Curl] = []
        active: dict[pycurl.Curl, tuple[_Entry, Exchange]] = {}
        try:
            while True:
                starts = self._next_starts(len(active))
                if starts is None:
                    return
                for name, entry in starts:
                    self._start(multi, idle, active, name, entry)
                while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                    pass
                while True:
                    queued, ok, failed = multi.info_read()
                    for handle in ok:
                        self._finish(multi, idle, active, handle, True)
                    for handle, _code, _message in failed:
                        self._finish(multi, idle, active, handle, False)
                    if not queued:
                        break
                self._sleep(multi, bool(active))
        except Exception:  # a bug here must not hang the decoders: they read directly
            log.exception("read-ahead stopped; objects are read one by one")
        finally:
            for handle, (entry, _) in active.items():
                multi.remove_handle(handle)
                handle.close()
                entry.done.set()
            for handle in idle:
                handle.close()
            multi.close()
            with self._lock:
                self._closed.set()
                for entry in self._entries.values():
                    entry.done.set()

    def _next_starts(self, active: int) -> list[tuple[str, _Entry]] | None:
        """The GETs to start now (None: closed), within the bounds."""
        with self._lock:
            if self._closed.is_set():
                return None
            starts: list[tuple[str, _Entry]] = []
            if self._full and not self._has_room():
                return starts
            self._full = False
            while self._wanted and active + len(starts) < self.transfers:
                if len(self._entries) >= self.ahead or self._held >= self.max_held:
                    self._full = True
                    break
                name = self._wanted.popleft()
                self._waiting.discard(name)
                entry = self._entries[name] = _Entry()
                starts.append((name, entry))
            return starts

    def _head_ready(self) -> bool:
        """Whether the next :data:`LOW_WATER` objects to be taken are finished (entries
        are started, and so kept, in the order they will be taken)."""
        with self._lock:
            if len(self._entries) < LOW_WATER:
                return False
            for n, entry in enumerate(self._entries.values()):
                if n >= LOW_WATER:
                    return True
                if not entry.done.is_set():
                    return False
        return True

    def _has_room(self) -> bool:
        """Room for a batch: ``_batch`` objects under the count, a quarter under the bytes
        (large objects: a few takes make room, the buffer need not drain first)."""
        return (
            len(self._entries) <= self.ahead - self._batch
            and self._held <= self.max_held - self.max_held // 4
        )

    def _start(
        self,
        multi: pycurl.CurlMulti,
        idle: list[pycurl.Curl],
        active: dict[pycurl.Curl, tuple[_Entry, Exchange]],
        name: str,
        entry: _Entry,
    ) -> None:
        try:
            signed = self._sign(name)
        except Exception:  # the caller's own read raises it, with its message
            entry.done.set()
            return
        if signed.method != "GET" or not self._fetcher.permits(signed.url):
            entry.done.set()  # refused: the Fetcher refuses it again, and reports it
            return
        handle = idle.pop() if idle else pycurl.Curl()
        exchange = self._fetcher.pool.prepare_get(
            handle, signed.url, signed.headers, self._fetcher.max_bytes
        )
        active[handle] = (entry, exchange)
        multi.add_handle(handle)

    def _finish(
        self,
        multi: pycurl.CurlMulti,
        idle: list[pycurl.Curl],
        active: dict[pycurl.Curl, tuple[_Entry, Exchange]],
        handle: pycurl.Curl,
        ok: bool,
    ) -> None:
        entry, exchange = active.pop(handle)
        multi.remove_handle(handle)
        status = int(handle.getinfo(pycurl.RESPONSE_CODE)) if ok else 0
        if ok and 200 <= status < 300:
            idle.append(handle)
            body = b"".join(exchange.chunks)
            with self._lock:
                entry.body, entry.size = body, len(body)
                self._held += entry.size
        elif ok:
            idle.append(handle)  # an HTTP refusal: the connection is fine
        else:
            handle.close()  # a transfer error: its connection may be mid-answer
        entry.done.set()

    def _sleep(self, multi: pycurl.CurlMulti, busy: bool) -> None:
        """Until a socket of a transfer is ready, libcurl's timer fires, or a want/take.

        With the next :data:`LOW_WATER` objects ready the decoders have plenty, and
        the thread naps instead: waking for every socket that becomes readable cost a
        wake-up, and a preempted decoder, each time, about two an object."""
        if busy and self._head_ready():
            self._closed.wait(NAP_S)
            return
        reads, writes, errors = multi.fdset()
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in reads:
            poller.register(fd, select.POLLIN)
        for fd in writes:
            poller.register(fd, select.POLLOUT | (select.POLLIN if fd in reads else 0))
        for fd in errors:
            if fd not in reads and fd not in writes:
                poller.register(fd, select.POLLPRI)
        timeout = multi.timeout() if busy else -1
        if busy and not (reads or writes):
            timeout = _NO_SOCKET_WAIT_MS if timeout < 0 else min(timeout, _NO_SOCKET_WAIT_MS)
        if timeout < 0 or timeout > _IDLE_WAIT_MS:
            timeout = _IDLE_WAIT_MS
        for fd, _ in poller.poll(timeout):
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
