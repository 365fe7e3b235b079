"""A mounted folder (PVC or local path): the same listing interface, no signing.

The pipeline reads a volume directly from disk (the fastest path); this class exists
so code that works on a :class:`~sift_worker.storage.base.Storage` (listing, filters,
empty-input errors) treats every backend alike.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from sift_worker.imaging import IMAGE_EXTENSIONS
from sift_worker.sources.volume import iter_volume_files
from sift_worker.storage.base import (
    BucketNotFoundError,
    ListFilter,
    ObjectInfo,
    OutsidePrefixError,
    SignedURL,
    Storage,
)

__all__ = ["VolumeStorage"]


class VolumeStorage(Storage):
    scheme = "file"

    def __init__(self, root: Path, *, writable: bool = False) -> None:
        super().__init__(str(root), "", writable=writable)
        self.root = Path(root)

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        """Pages over the sorted walk; the token is the last key of the previous page.

        Each page restarts the walk (cheap next to decoding); for a full listing use
        :meth:`iter_objects`, which streams the walk once.
        """
        walk: Iterator[str] = self._walk(None)
        if token is not None:
            walk = itertools.dropwhile(lambda k: k <= token, walk)
        keys = list(itertools.islice(walk, page_size + 1))
        page = [self._info(k) for k in keys[:page_size]]
        return page, (keys[page_size - 1] if len(keys) > page_size else None)

    def iter_objects(
        self, keep: ListFilter | None = None, page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """One streamed walk (image extensions unless ``keep`` names others)."""
        return (self._info(k) for k in self._walk(keep) if keep is None or keep(k))

    def _walk(self, keep: ListFilter | None) -> Iterator[str]:
        exts = keep.extensions if keep is not None and keep.extensions is not None else None
        try:
            return iter_volume_files(
                self.root,
                extensions=exts if exts is not None else IMAGE_EXTENSIONS,
                relevant=keep.relevant if keep is not None else None,
            )
        except FileNotFoundError:
            raise BucketNotFoundError(self.uri(), "folder not found") from None
        except NotADirectoryError:
            raise BucketNotFoundError(self.uri(), "not a folder") from None

    def _info(self, key: str) -> ObjectInfo:
        try:
            size: int | None = os.stat(self.root / key).st_size
        except OSError:
            size = None
        return ObjectInfo(key, size)

    def _sign(
        self,
        method: str,
        key: str,
        full_key: str,
        lifetime: timedelta,
        content_type: str | None,
    ) -> SignedURL:
        raise OutsidePrefixError(
            self.uri(key), "a volume is read directly; there is nothing to sign"
        )

    def hosts(self) -> frozenset[str]:
        return frozenset()
