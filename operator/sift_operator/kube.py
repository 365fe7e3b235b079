"""The operator's own Kubernetes API I/O: a small async client over aiohttp.

kopf watches and caches; this client does the few writes a reconcile needs (create a
child, patch a Job's ``suspend``, patch a run's ``/status``, post an Event) and the
reads kopf does not cache (Secrets, only to learn that they and their keys exist).

Credentials come from the same place kopf and kubectl look: the in-cluster service
account (its token re-read as it rotates) or the kubeconfig. No token, Secret value or
response body of a Secret is ever logged or put into an exception message.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

# kind -> (plural, namespaced); the kinds the operator reads or writes.
PLURALS: dict[str, str] = {
    "SelectionRun": "selectionruns",
    "ServiceAccount": "serviceaccounts",
    "ConfigMap": "configmaps",
    "NetworkPolicy": "networkpolicies",
    "CiliumNetworkPolicy": "ciliumnetworkpolicies",
    "Job": "jobs",
    "Pod": "pods",
    "Secret": "secrets",
    "Event": "events",
}

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
_MAX_MESSAGE = 300
TOKEN_REFRESH_SECONDS = 30.0


class ApiError(Exception):
    """A non-2xx answer. ``message`` is the API server's own (it never holds Secret data)."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message[:_MAX_MESSAGE]
        super().__init__(f"{method} {path}: {status} {reason}: {self.message}")

    @property
    def already_exists(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def quota_exceeded(self) -> bool:
        return self.status == 403 and "exceeded quota" in self.message.lower()

    @property
    def retryable(self) -> bool:
        return self.status in (429, 500, 502, 503, 504) or self.quota_exceeded


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/ns/pods/name`` or ``/apis/group/version/...``."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base]
    if namespace is not None:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(PLURALS[kind])
    if name is not None:
        parts.append(quote(name, safe=""))
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


def object_path(obj: Mapping[str, Any], subresource: str | None = None) -> str:
    meta = obj["metadata"]
    return resource_path(
        obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], subresource
    )


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate (token read per request)."""

    host: str
    ssl_context: ssl.SSLContext | None
    token: Callable[[], str | None]


def connection_from_environment() -> Connection:
    """In-cluster service account when running in a pod, else the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx: ssl.SSLContext | None = None
    host = str(cfg.host).rstrip("/")
    if host.startswith("https://"):
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    cache: list[Any] = [0.0, None]  # [read at, token]

    def token() -> str | None:
        # the client's refresh hook re-reads a rotated token, but costs ~1 ms a call:
        # ask it at most every TOKEN_REFRESH_SECONDS (bound tokens live for an hour)
        now = time.monotonic()
        if now - cache[0] > TOKEN_REFRESH_SECONDS:
            auth = cfg.auth_settings().get("BearerToken")
            value = auth.get("value") if auth else None
            cache[:] = [now, str(value) if value else None]
        return cache[1]  # type: ignore[no-any-return]

    return Connection(host=host, ssl_context=ctx, token=token)


class Kube:
    """The async API client; one per operator process, one connection pool."""

    def __init__(self, conn: Connection, *, timeout: float = 30.0, pool: int = 64) -> None:
        self._conn = conn
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0  # for metrics and the benchmark

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool, ssl=self._conn.ssl_context or False)
            self._session = aiohttp.ClientSession(
                base_url=self._conn.host, connector=connector, timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "User-Agent": "sift-operator"}
        token = self._conn.token()
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body, separators=(",", ":"))
        self.requests += 1
        session = self._get_session()
        async with session.request(method, path, data=data, headers=headers, params=params) as resp:
            text = await resp.text()
            if resp.status >= 400:
                reason, message = str(resp.status), ""
                try:
                    status = json.loads(text)
                    reason = str(status.get("reason") or reason)
                    message = str(status.get("message") or "")
                except (ValueError, AttributeError):
                    message = resp.reason or ""
                raise ApiError(resp.status, reason, message, method, path)
            if not text:
                return {}
            result = json.loads(text)
            return result if isinstance(result, dict) else {}

    # --- verbs ---

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return await self.request("POST", path, obj)

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def merge_patch(
        self, obj: Mapping[str, Any], patch: Mapping[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", object_path(obj, subresource), patch, content_type=MERGE_PATCH
        )

    async def json_patch(
        self,
        obj: Mapping[str, Any],
        ops: Sequence[Mapping[str, Any]],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", object_path(obj, subresource), list(ops), content_type=JSON_PATCH
        )

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The data keys of a Secret (never its values), or None when it does not exist."""
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        del secret  # drop the values at once
        return keys


class TTLCache:
    """A tiny time-bounded cache (host -> resolved CIDRs)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, key: str) -> tuple[str, ...] | None:
        hit = self._items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: str, value: tuple[str, ...]) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())
