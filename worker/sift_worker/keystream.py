"""An object-storage listing that runs while its first keys are already being used.

A bucket lists 1,000 keys a page, one page after another (each page's token comes
with the previous one): 5,000 keys took s3rver 1.5 s, a million take real S3 minutes.
A :class:`KeyStream` lists in a thread of its own and hands out keys as their page
arrives, so the decoders start on page one while later pages are listed. It is a
sequence whose ``len`` and out-of-range reads wait for the listing to finish; a
listing error is raised to whoever reads past the keys listed before it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator

from sift_worker.storage import ObjectInfo

__all__ = ["KeyStream"]


class KeyStream:
    def __init__(self, objects: Callable[[], Iterable[ObjectInfo]]) -> None:
        self._keys: list[str] = []
        self._digest = hashlib.sha256()  # of the keys and sizes, as RemoteInput.list
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._list, args=(objects,), name="listing", daemon=True
        )
        self._thread.start()

    def _list(self, objects: Callable[[], Iterable[ObjectInfo]]) -> None:
        try:
            for info in objects():
                self._digest.update(f"{info.key}\0{info.size}\0".encode())
                with self._cond:
                    self._keys.append(info.key)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the reader (EmptyInputError, StorageError)
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _wait(self, i: int | None) -> None:
        """Until key ``i`` is listed (``None``: the whole listing); raises its error."""
        with self._cond:
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

    def result(self) -> tuple[list[str], str]:
        """Every key, in listing order, and the listing digest (after it finished)."""
        self._wait(None)
        self._thread.join()
        return list(self._keys), self._digest.hexdigest()
