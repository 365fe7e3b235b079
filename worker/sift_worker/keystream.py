"""An object-storage listing that runs while its first keys are already being used.

A bucket lists 1,000 keys a page, one page after another (each page's token comes
with the previous one): 5,000 keys took s3rver 1.5 s, a million take real S3 minutes.
A :class:`KeyStream` lists in a thread of its own and hands out keys as their page
arrives, so the decoders start on page one while later pages are listed. It is a
sequence whose ``len`` and out-of-range reads wait for the listing to finish; a
listing error is raised to whoever reads past the keys listed before it.

The next page is asked for only once the reader is within ``ahead`` keys of the end
of those listed. A server that lists slowly then does it while the decoders have
objects in hand, not all at the start when they have none: s3rver answers nothing
else while it builds a page (0.3-0.5 s for 1,000 of 5,000 keys), and listing its
five pages back to back left the worker idle for 1.3 s of a 25 s run. A huge bucket
is not listed faster than it is used, either. Asking for the whole listing (``len``,
:meth:`result`) lifts the bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator

from sift_worker.storage import ObjectInfo

__all__ = ["LIST_AHEAD", "KeyStream", "keys_digest"]

LIST_AHEAD = 500  # the next page is asked for once the reader is this close to the end


def keys_digest(keys: Iterable[str], sizes: Iterable[int]) -> str:
    """SHA-256 of keys and their sizes, in order: what a listing is checked by."""
    h = hashlib.sha256()
    for key, size in zip(keys, sizes, strict=True):
        h.update(f"{key}\0{size}\0".encode())
    return h.hexdigest()


class KeyStream:
    def __init__(
        self, pages: Callable[[], Iterable[Iterable[ObjectInfo]]], ahead: int = LIST_AHEAD
    ) -> None:
        """``pages``: the listing a page at a time; the next is pulled when it is wanted."""
        self._keys: list[str] = []
        self._sizes = array("q")  # row-aligned with _keys; -1: not known
        self.ahead = max(1, ahead)
        self._reach = 0  # one past the furthest index read
        self._unbounded = False  # the whole listing is wanted
        self._paused = False  # the listing thread waits for the reader
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._list, args=(pages,), name="listing", daemon=True
        )
        self._thread.start()

    def _list(self, pages: Callable[[], Iterable[Iterable[ObjectInfo]]]) -> None:
        try:
            for page in pages():
                with self._cond:
                    for info in page:
                        self._keys.append(info.key)
                        self._sizes.append(-1 if info.size is None else info.size)
                    self._cond.notify_all()
                    while not self._may_go_on():
                        self._paused = True
                        self._cond.wait()
                    self._paused = False
                    if self._closed:
                        return
        except BaseException as exc:  # handed to the reader (EmptyInputError, StorageError)
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _may_go_on(self) -> bool:
        return self._closed or self._unbounded or len(self._keys) < self._reach + self.ahead

    def _wait(self, i: int | None) -> None:
        """Until key ``i`` is listed (``None``: the whole listing); raises its error."""
        with self._cond:
            if i is None:
                self._unbounded = True
            else:
                self._reach = max(self._reach, i + 1)
            if self._paused and self._may_go_on():
                self._cond.notify_all()  # the next page
            while not self._done and (i is None or i >= len(self._keys)):
                self._cond.wait()
            if self._error is not None and (i is None or i >= len(self._keys)):
                raise self._error

    def __getitem__(self, i: int) -> str:
        if i < 0:
            raise IndexError("KeyStream has no negative indices")
        self._wait(i)
        if i >= len(self._keys):
            raise IndexError(i)
        return self._keys[i]

    def __iter__(self) -> Iterator[str]:
        i = 0
        while True:
            try:
                yield self[i]
            except IndexError:
                return
            i += 1

    def __len__(self) -> int:
        self._wait(None)
        return len(self._keys)

    def digest(self, start: int, stop: int) -> str:
        """:func:`keys_digest` of keys ``[start, stop)``, fewer where the listing ends."""
        if stop > start:
            with contextlib.suppress(IndexError):
                self[stop - 1]  # waits for it to be listed
        with self._cond:
            end = min(stop, len(self._keys))
            return keys_digest(self._keys[start:end], self._sizes[start:end])

    def close(self) -> None:
        """Stop listing (the reader gave up); the keys listed so far stay readable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def result(self) -> tuple[list[str], str]:
        """Every key, in listing order, and their :func:`keys_digest` (once listed)."""
        self._wait(None)
        self._thread.join()
        return list(self._keys), keys_digest(self._keys, self._sizes)
