"""The storage interface every backend implements: stream a listing, sign GET and upload URLs.

A :class:`Storage` is one *location*: a bucket (or container, or folder) and a key prefix.
Keys handed in and out are **relative to the prefix**, like the relative paths of a
volume, so the pipeline never sees where a run's data lives and cannot name a key
outside it. Signing is scoped: :meth:`Storage.sign_get` signs one object under the
prefix, :meth:`Storage.sign_put` one object under the prefix of a *writable* location
(the run's output), each for one method and a capped lifetime.

The same objects serve the in-cluster broker (which holds the credentials and hands
signed URLs to the worker) and local runs (``sift-worker run`` signs in-process with
the user's own credentials): :class:`sift_worker.storage.signer.RunSigner` is the API a
broker calls.

Signed URLs are secrets: :class:`SignedURL` never shows its query string in ``repr``
or ``str``, and no error message here contains one.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sift_worker.logs import redact

__all__ = [
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "AccessDeniedError",
    "BadCredentialsError",
    "BucketNotFoundError",
    "EmptyInputError",
    "ListFilter",
    "ObjectInfo",
    "ObjectNotFoundError",
    "OutsidePrefixError",
    "SignedPost",
    "SignedURL",
    "Storage",
    "StorageError",
    "check_key",
]

DEFAULT_LIFETIME = timedelta(minutes=15)
"""Lifetime of a signed URL unless configured: long enough for one fetch with retries."""

MAX_LIFETIME = timedelta(days=7)
"""The longest any backend accepts (SigV4 and GCS V4 refuse more); requests are capped here."""

MIN_LIFETIME = timedelta(seconds=1)


class StorageError(Exception):
    """A storage problem that names the location (``uri``) and never carries a secret."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = redact(reason)
        super().__init__(f"{uri}: {self.reason}")


class BucketNotFoundError(StorageError):
    """The bucket (GCS, S3) or container (Azure) or folder (volume) does not exist."""


class EmptyInputError(StorageError):
    """Nothing to work on under the input prefix (missing prefix, or every key filtered out)."""


class BadCredentialsError(StorageError):
    """The credentials are missing, malformed, unknown to the service or do not match."""


class AccessDeniedError(StorageError):
    """The credentials are valid but lack the permission for this bucket or object."""


class ObjectNotFoundError(StorageError):
    """One object does not exist (any more)."""


class OutsidePrefixError(StorageError):
    """A key that would leave the location's prefix, or an upload to a read-only location."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key relative to the prefix and its size in bytes."""

    key: str
    size: int | None = None


@dataclass(frozen=True, repr=False)
class SignedURL:
    """A URL that grants one method on one object until ``expires_at``. A secret."""

    method: str
    url: str
    key: str  # relative to the location's prefix
    expires_at: datetime
    headers: Mapping[str, str] = field(default_factory=dict)  # the request must send these

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    def expires_within(self, margin: timedelta, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) + margin >= self.expires_at

    def __repr__(self) -> str:
        return (
            f"SignedURL({self.method} {redact(self.url)}, key={self.key!r}, "
            f"expires_at={self.expires_at.isoformat()})"
        )

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class SignedPost:
    """An S3 POST policy: a browser-style form upload for any key under ``key_prefix``."""

    url: str
    fields: Mapping[str, str]
    key_prefix: str  # absolute key prefix the policy allows (``starts-with``)
    expires_at: datetime

    def __repr__(self) -> str:
        return f"SignedPost({redact(self.url)}, key_prefix={self.key_prefix!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class ListFilter:
    """Which listed keys a run uses: by extension, an explicit list, and a regex.

    ``extensions`` are lower case with the dot and match case-insensitively; hidden
    keys (a path component starting with ``.``) are skipped like on a volume, so
    ``.sift/`` side data is never taken for samples; ``relevant`` keeps only those
    relative keys; ``pattern`` must match the whole relative key (``re.fullmatch``).
    """

    extensions: frozenset[str] | None = None
    relevant: Container[str] | None = None
    pattern: re.Pattern[str] | None = None
    skip_hidden: bool = True

    def __call__(self, key: str) -> bool:
        if self.skip_hidden and any(part.startswith(".") for part in key.split("/")):
            return False
        if self.extensions is not None and os.path.splitext(key)[1].lower() not in self.extensions:
            return False
        if self.relevant is not None and key not in self.relevant:
            return False
        return self.pattern is None or self.pattern.fullmatch(key) is not None

    def describe(self) -> str:
        parts = []
        if self.extensions is not None:
            parts.append("extensions " + ",".join(sorted(self.extensions)))
        if self.relevant is not None:
            parts.append("relevantFilenames")
        if self.pattern is not None:
            parts.append(f"regex {self.pattern.pattern!r}")
        return " and ".join(parts) or "no filter"


_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_key(key: str, where: str) -> str:
    """Validate a key relative to a prefix: no way out of it, no ambiguous spelling.

    Refused (``OutsidePrefixError``): empty keys, a leading ``/``, ``.`` or ``..`` or empty
    components (HTTP clients and some S3-compatible servers normalise them away, which
    would move the key outside the prefix), backslashes and control characters.
    """
    if not key or key.startswith("/") or _BAD_KEY_CHARS.search(key):
        raise OutsidePrefixError(where, f"refused key {key!r}: not a plain relative key")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise OutsidePrefixError(where, f"refused key {key!r}: '.', '..' or empty path components")
    return key


def cap_lifetime(lifetime: timedelta | None, backend_max: timedelta = MAX_LIFETIME) -> timedelta:
    """The lifetime to sign with: the default when None, clamped to [1 s, backend max]."""
    chosen = DEFAULT_LIFETIME if lifetime is None else lifetime
    return max(MIN_LIFETIME, min(chosen, backend_max, MAX_LIFETIME))


def join_prefix(prefix: str, key: str) -> str:
    """Absolute key of ``key`` under ``prefix`` (a prefix is used as given, like S3 does)."""
    return prefix + key


class Storage(ABC):
    """One location (bucket + prefix); keys are relative to the prefix."""

    scheme: str = ""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        writable: bool = False,
        lifetime: timedelta | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.writable = writable
        self.lifetime = cap_lifetime(lifetime, self.max_lifetime)

    max_lifetime: timedelta = MAX_LIFETIME

    # --- naming -------------------------------------------------------------------------

    def uri(self, key: str = "") -> str:
        """Where a key lives, for messages: ``s3://bucket/prefix/key``. Never a URL."""
        return f"{self.scheme}://{self.bucket}/{self.prefix}{key}"

    def full_key(self, key: str) -> str:
        return join_prefix(self.prefix, check_key(key, self.uri()))

    # --- listing ------------------------------------------------------------------------

    @abstractmethod
    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        """One page of the listing under the prefix, in key order, and the next token."""

    def iter_objects(
        self, keep: ListFilter | None = None, page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Stream every object under the prefix that ``keep`` accepts, page by page.

        Holds one page at a time: listing millions of keys needs constant memory.
        Raises :class:`BucketNotFoundError`, :class:`BadCredentialsError`,
        :class:`AccessDeniedError`
        at the first page (before anything is yielded).
        """
        token: str | None = None
        while True:
            page, token = self.list_page(token, page_size)
            for info in page:
                if keep is None or keep(info.key):
                    yield info
            if token is None:
                return

    def require_objects(
        self, keep: ListFilter | None = None, page_size: int = 1000
    ) -> Iterator[ObjectInfo]:
        """Like :meth:`iter_objects`, but an empty result raises :class:`EmptyInputError`."""
        for page in self.require_pages(keep, page_size):
            yield from page

    def require_pages(
        self, keep: ListFilter | None = None, page_size: int = 1000
    ) -> Iterator[list[ObjectInfo]]:
        """:meth:`require_objects` a page at a time: the next page is asked for only when
        the caller wants it (a :class:`~sift_worker.keystream.KeyStream` paces them)."""
        listed = 0
        kept = 0
        token: str | None = None
        while True:
            page, token = self.list_page(token, page_size)
            listed += len(page)
            accepted = [info for info in page if keep is None or keep(info.key)]
            kept += len(accepted)
            if accepted:
                yield accepted
            if token is None:
                break
        if listed == 0:
            raise EmptyInputError(
                self.uri(), "no objects under this prefix (missing or empty prefix)"
            )
        if kept == 0:
            raise EmptyInputError(
                self.uri(),
                f"{listed} objects under this prefix, none matched "
                f"{keep.describe() if keep else 'the filter'}",
            )

    # --- signing ------------------------------------------------------------------------

    def sign_get(self, key: str, lifetime: timedelta | None = None) -> SignedURL:
        """A URL to GET one object under the prefix."""
        full = self.full_key(key)
        return self._sign(
            "GET", key, full, cap_lifetime(lifetime or self.lifetime, self.max_lifetime), None
        )

    def sign_put(
        self, key: str, lifetime: timedelta | None = None, content_type: str | None = None
    ) -> SignedURL:
        """A URL to PUT one object under the prefix; only for a writable (output) location."""
        if not self.writable:
            raise OutsidePrefixError(self.uri(), "refused upload: this location is read-only")
        full = self.full_key(key)
        return self._sign(
            "PUT",
            key,
            full,
            cap_lifetime(lifetime or self.lifetime, self.max_lifetime),
            content_type,
        )

    @abstractmethod
    def _sign(
        self,
        method: str,
        key: str,
        full_key: str,
        lifetime: timedelta,
        content_type: str | None,
    ) -> SignedURL: ...

    def hosts(self) -> frozenset[str]:
        """Hosts that this location's signed URLs point at (for the egress allowlist)."""
        return frozenset({self._sign("GET", "x", self.prefix + "x", MIN_LIFETIME, None).host})


def expiry(lifetime: timedelta) -> datetime:
    return datetime.now(UTC) + lifetime
