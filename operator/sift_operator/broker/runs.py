"""From a run to its signer: the run read from the API, its Secrets, its two locations.

The broker signs for a run only while the run is active (not Succeeded/Failed), and only
inside the run's locations: the input under its prefix, the output under
``<prefix><namespace>/<name>/<uid>/``. The Secrets named by ``credentialsSecret`` are
read here, decoded and handed to :func:`sift_worker.storage.open_storage`; their values
live in the signer's backend clients only, never in a message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from pydantic import ValidationError
from sift_worker.api.v1alpha1 import API_VERSION, KIND, SelectionRunSpec, StorageLocation
from sift_worker.storage import (
    BadCredentialsError,
    ListFilter,
    ObjectInfo,
    OutsidePrefixError,
    RunSigner,
    SignedURL,
    Storage,
    open_storage,
)

from sift_operator import status as run_status

__all__ = ["RunGoneError", "RunInactiveError", "RunSigners", "SignerFor", "output_suffix"]

GROUP_VERSION = API_VERSION  # "sift.dev/v1alpha1"


class _Kube(Protocol):
    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...


class RunGoneError(Exception):
    """The run does not exist (any more)."""


class RunInactiveError(Exception):
    """The run is finished (or not usable): nothing more is signed for it."""


@dataclass(frozen=True)
class SignerFor:
    run: dict[str, Any]  # apiVersion, kind, metadata (name, namespace, uid) only
    uid: str
    signer: RunSigner


class MountedVolume(Storage):
    """A location the worker mounts (a PVC): the broker lists and signs nothing there.

    Never a VolumeStorage: that would walk the *operator's* file system at a path the
    run's author chose.
    """

    scheme = "volume"

    def __init__(self, role: str) -> None:
        super().__init__(role, "", writable=False)
        self.role = role

    def uri(self, key: str = "") -> str:
        return f"spec.datasource.{self.role}.volume"

    def _refuse(self) -> OutsidePrefixError:
        return OutsidePrefixError(
            self.uri(), "a volume is mounted in the worker; the broker signs object storage only"
        )

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        raise self._refuse()

    def _sign(
        self, method: str, key: str, full_key: str, lifetime: timedelta, content_type: str | None
    ) -> SignedURL:
        raise self._refuse()

    def hosts(self) -> frozenset[str]:
        return frozenset()


def output_suffix(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name}/{uid}/"


def decode_secret(secret: Mapping[str, Any], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise BadCredentialsError(where, f"Secret key {key!r} is not base64 text") from None
    for key, value in (secret.get("stringData") or {}).items():
        out[key] = str(value)
    return out


class RunSigners:
    """Signers by run, cached briefly (a rotated Secret is picked up within ``ttl``)."""

    def __init__(
        self,
        kube: _Kube,
        *,
        lifetime: timedelta,
        ttl: float = 60.0,
        state_ttl: float = 2.0,
    ) -> None:
        self.kube = kube
        self.lifetime = lifetime
        self.ttl = ttl
        self.state_ttl = state_ttl
        self._signers: dict[str, tuple[float, SignerFor]] = {}
        self._runs: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def read_run(self, namespace: str, name: str) -> dict[str, Any]:
        """The run from the API (cached ``state_ttl``); RunGoneError / RunInactiveError."""
        now = time.monotonic()
        hit = self._runs.get((namespace, name))
        if hit is not None and hit[0] > now:
            run = hit[1]
        else:
            found = await self.kube.get(GROUP_VERSION, KIND, namespace, name)
            if found is None:
                self._runs.pop((namespace, name), None)
                raise RunGoneError(f"run {namespace}/{name} not found")
            run = found
            self._runs[(namespace, name)] = (now + self.state_ttl, run)
            if len(self._runs) > 4096:
                self._runs = {k: v for k, v in self._runs.items() if v[0] > now}
        if run_status.is_terminal(run.get("status")):
            raise RunInactiveError(f"run {namespace}/{name} is finished")
        if (run.get("metadata") or {}).get("deletionTimestamp"):
            raise RunInactiveError(f"run {namespace}/{name} is being deleted")
        return run

    async def signer(self, namespace: str, name: str) -> SignerFor:
        run = await self.read_run(namespace, name)
        uid = str(run["metadata"].get("uid") or "")
        if not uid:
            raise RunInactiveError(f"run {namespace}/{name} has no uid")
        now = time.monotonic()
        hit = self._signers.get(uid)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._locks.setdefault(uid, asyncio.Lock()):
            hit = self._signers.get(uid)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            made = await self._make(run, namespace, name, uid)
            self._signers = {k: v for k, v in self._signers.items() if v[0] > now}
            self._signers[uid] = (time.monotonic() + self.ttl, made)
        self._locks.pop(uid, None)
        return made

    async def _secret(self, namespace: str, loc: StorageLocation, where: str) -> dict[str, str]:
        ref = loc.credentials_secret
        assert ref is not None
        secret = await self.kube.get("v1", "Secret", namespace, ref)
        if secret is None:
            raise BadCredentialsError(where, f"Secret {namespace}/{ref} not found")
        return decode_secret(secret, where)

    async def _make(self, run: dict[str, Any], namespace: str, name: str, uid: str) -> SignerFor:
        try:
            spec = SelectionRunSpec.model_validate(run.get("spec") or {})
        except ValidationError:
            raise RunInactiveError(f"run {namespace}/{name} has an invalid spec") from None
        ds = spec.datasource
        secrets: dict[str, dict[str, str] | None] = {}
        for role, loc in (("input", ds.input), ("output", ds.output)):
            where = f"spec.datasource.{role}"
            secrets[role] = (
                await self._secret(namespace, loc, where) if loc.credentials_secret else None
            )
        lifetime = self.lifetime

        def build() -> RunSigner:
            # no process environment: a location without credentialsSecret uses the
            # operator's ambient identity (boto3's chain: IRSA), as documented
            in_store: Storage = (
                MountedVolume("input")
                if ds.input.volume is not None
                else open_storage(
                    ds.input, writable=False, secret=secrets["input"], lifetime=lifetime
                )
            )
            out_store = None
            if ds.output.volume is None:
                out_store = open_storage(
                    ds.output,
                    writable=True,
                    secret=secrets["output"],
                    lifetime=lifetime,
                    prefix_suffix=output_suffix(namespace, name, uid),
                )
            return RunSigner(in_store, out_store, keep=ListFilter(), lifetime=lifetime)

        signer = await asyncio.to_thread(build)
        ident = {
            "apiVersion": run.get("apiVersion", GROUP_VERSION),
            "kind": run.get("kind", KIND),
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
        }
        return SignerFor(ident, uid, signer)
