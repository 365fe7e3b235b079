"""The signer: one run's input (read) and output (write) locations, and nothing else.

This is the API the in-cluster broker calls for a worker's request, and what a local
``sift-worker run`` calls in-process, so both sign with the same code:

* :meth:`RunSigner.list_inputs` pages through the input with a freshly signed GET URL
  per object (an opaque continuation token, so a broker can serve pages statelessly);
* :meth:`RunSigner.sign_inputs` re-signs given keys (expiry refresh);
* :meth:`RunSigner.sign_uploads` signs PUTs for keys under the output prefix only, and
  :meth:`RunSigner.sign_upload_post` an S3 POST policy with a ``starts-with`` condition;
* :meth:`RunSigner.sign_output_reads` signs GETs under the output prefix (resuming
  from a checkpoint);
* :meth:`RunSigner.allowed_hosts` is the storage part of the worker's egress allowlist.

Keys are relative to the location's prefix; anything that would leave it is refused
with :class:`~sift_worker.storage.base.OutsidePrefixError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sift_worker.storage.base import (
    ListFilter,
    ObjectInfo,
    OutsidePrefixError,
    SignedPost,
    SignedURL,
    Storage,
)

__all__ = ["InputPage", "RunSigner"]

MAX_KEYS_PER_REQUEST = 1000


@dataclass(frozen=True)
class InputPage:
    objects: list[tuple[ObjectInfo, SignedURL]]
    next_token: str | None


class RunSigner:
    def __init__(
        self,
        input: Storage,
        output: Storage | None = None,
        *,
        keep: ListFilter | None = None,
        lifetime: timedelta | None = None,
    ) -> None:
        if output is not None and not output.writable:
            raise OutsidePrefixError(output.uri(), "the output location must be writable")
        self.input = input
        self.output = output
        self.keep = keep
        self.lifetime = lifetime

    def list_inputs(self, token: str | None = None, page_size: int = 1000) -> InputPage:
        """One page of accepted input objects, each with a signed GET URL."""
        page, nxt = self.input.list_page(token, min(page_size, MAX_KEYS_PER_REQUEST))
        kept = [o for o in page if self.keep is None or self.keep(o.key)]
        return InputPage([(o, self.input.sign_get(o.key, self.lifetime)) for o in kept], nxt)

    def sign_inputs(self, keys: Sequence[str]) -> list[SignedURL]:
        self._check_count(keys)
        return [self.input.sign_get(k, self.lifetime) for k in keys]

    def sign_uploads(
        self, keys: Sequence[str], content_types: Iterable[str | None] | None = None
    ) -> list[SignedURL]:
        if self.output is None:
            raise OutsidePrefixError(
                self.input.uri(), "this run has no output location to write to"
            )
        self._check_count(keys)
        types = list(content_types) if content_types is not None else [None] * len(keys)
        out = self.output
        return [out.sign_put(k, self.lifetime, t) for k, t in zip(keys, types, strict=True)]

    def sign_output_reads(self, keys: Sequence[str]) -> list[SignedURL]:
        """GETs for keys under the output prefix (a checkpoint a previous attempt wrote)."""
        if self.output is None:
            raise OutsidePrefixError(self.input.uri(), "this run has no output location")
        self._check_count(keys)
        return [self.output.sign_get(k, self.lifetime) for k in keys]

    def sign_upload_post(self, key_prefix: str = "") -> SignedPost:
        from sift_worker.storage.s3 import S3Storage

        if not isinstance(self.output, S3Storage):
            where = self.output.uri() if self.output else self.input.uri()
            raise OutsidePrefixError(where, "POST policies exist for S3 output only; use PUT")
        return self.output.sign_post(self.lifetime, key_prefix=key_prefix)

    def allowed_hosts(self) -> frozenset[str]:
        hosts = set(self.input.hosts())
        if self.output is not None:
            hosts |= self.output.hosts()
        return frozenset(hosts)

    @staticmethod
    def _check_count(keys: Sequence[str]) -> None:
        if len(keys) > MAX_KEYS_PER_REQUEST:
            raise ValueError(f"at most {MAX_KEYS_PER_REQUEST} keys per request, got {len(keys)}")
