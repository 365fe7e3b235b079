"""The worker's side of the broker: signed URLs from the operator, no credentials here.

In a cluster the worker holds no storage credential. :class:`BrokerClient` asks the
operator's broker (HTTPS, its CA from the run's ConfigMap) for signed URLs, with the
pod's projected ServiceAccount token re-read from its file on every request (the kubelet
rotates it). Requests go through the egress guard of :mod:`sift_worker.fetch`: the
broker's host only.

:class:`BrokerSigner` is a :class:`~sift_worker.storage.RunSigner` whose locations are
the broker's (:class:`BrokerLocation`), so the data plane uses one code path for local
(in-process signing) and cluster runs. The listing's signed URLs are kept (a bounded
number) so each object costs no extra request until its URL nears expiry; the
Fetcher's refresh hook re-signs through the broker.
"""

from __future__ import annotations

import os
import ssl
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sift_worker.fetch import EgressRefusedError, Fetcher, counter_values, install_redaction
from sift_worker.logs import redact
from sift_worker.storage import (
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ObjectInfo,
    ObjectNotFoundError,
    OutsidePrefixError,
    RunSigner,
    SignedPost,
    SignedURL,
    Storage,
    StorageError,
)

__all__ = [
    "BrokerClient",
    "BrokerError",
    "BrokerLocation",
    "BrokerProgress",
    "BrokerSigner",
    "broker_signer_from_env",
    "client_from_env",
    "fetcher_for",
]

DEFAULT_CA_FILE = "/etc/sift/broker-ca.crt"
URL_CACHE = 20_000
REFRESH_MARGIN = timedelta(seconds=60)

_ERRORS: dict[str, type[StorageError]] = {
    "OutsidePrefixError": OutsidePrefixError,
    "BucketNotFoundError": BucketNotFoundError,
    "ObjectNotFoundError": ObjectNotFoundError,
    "EmptyInputError": EmptyInputError,
    "BadCredentialsError": BadCredentialsError,
    "AccessDeniedError": AccessDeniedError,
}


class BrokerError(Exception):
    """The broker refused or failed a request (``status``, ``kind``); never holds a URL."""

    def __init__(self, status: int, kind: str, reason: str) -> None:
        self.status = status
        self.kind = kind
        self.reason = redact(reason)
        super().__init__(f"broker: HTTP {status} {kind}: {self.reason}")


def _signed(doc: Mapping[str, Any]) -> SignedURL:
    return SignedURL(
        method=str(doc["method"]),
        url=str(doc["url"]),
        key=str(doc["key"]),
        expires_at=datetime.fromisoformat(str(doc["expiresAt"])),
        headers=dict(doc.get("headers") or {}),
    )


class _Guard(httpx.BaseTransport):
    """Only the broker's host:port; anything else is an egress refusal."""

    def __init__(self, inner: httpx.BaseTransport, host: str, port: int | None) -> None:
        self._inner, self._host, self._port = inner, host, port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.lower()
        if host != self._host or request.url.port != self._port:
            from sift_worker.fetch import EGRESS_REFUSED

            EGRESS_REFUSED.inc()
            raise EgressRefusedError(host)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class BrokerClient:
    """HTTP calls to the broker for one run; thread-safe."""

    def __init__(
        self,
        url: str,
        token_file: str | os.PathLike[str],
        *,
        namespace: str,
        name: str,
        ca_file: str | os.PathLike[str] | None = None,
        verify: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        install_redaction()
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"SIFT_BROKER_URL must be an https:// URL, got {parts.scheme!r}")
        self.host = parts.hostname.lower()
        self.port = parts.port or 443
        self.token_file = Path(token_file)
        if verify is None:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        inner = httpx.HTTPTransport(verify=verify, retries=2)
        self._http = httpx.Client(
            base_url=f"{url.rstrip('/')}/v1/runs/{namespace}/{name}",
            transport=_Guard(inner, self.host, self.port),
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
        )

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self._http.close()

    def _token(self) -> str:
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BrokerError(0, "NoToken", f"cannot read the token file: {exc.strerror}") from None

    def call(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            resp = self._http.request(method, path, json=body, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise BrokerError(0, "Unreachable", f"{type(exc).__name__} on {path}") from None
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            err = (data.get("error") if isinstance(data, dict) else None) or {}
            kind = str(err.get("kind") or "HTTPError")
            reason = str(err.get("reason") or f"HTTP {resp.status_code}")
            if kind in _ERRORS:
                raise _ERRORS[kind](str(err.get("uri") or "broker"), reason)
            raise BrokerError(resp.status_code, kind, reason)
        return data if isinstance(data, dict) else {}

    # --- endpoints --------------------------------------------------------------------

    def input_page(
        self, token: str | None, page_size: int
    ) -> tuple[list[tuple[ObjectInfo, SignedURL]], str | None]:
        params = {"pageSize": str(page_size)}
        if token:
            params["pageToken"] = token
        data = self.call("GET", "/inputs", **params)
        objects = [(ObjectInfo(str(o["key"]), o.get("size")), _signed(o)) for o in data["objects"]]
        return objects, data.get("nextPageToken")

    def sign_inputs(self, keys: Sequence[str]) -> list[SignedURL]:
        return [_signed(u) for u in self.call("POST", "/inputs/sign", {"keys": list(keys)})["urls"]]

    def sign_uploads(
        self, keys: Sequence[str], content_types: Iterable[str | None] | None = None
    ) -> list[SignedURL]:
        body: dict[str, Any] = {"keys": list(keys)}
        if content_types is not None:
            body["contentTypes"] = list(content_types)
        return [_signed(u) for u in self.call("POST", "/uploads/sign", body)["urls"]]

    def sign_output_reads(self, keys: Sequence[str]) -> list[SignedURL]:
        return [
            _signed(u) for u in self.call("POST", "/outputs/sign", {"keys": list(keys)})["urls"]
        ]

    def sign_upload_post(self, key_prefix: str = "") -> SignedPost:
        d = self.call("POST", "/uploads/post", {"keyPrefix": key_prefix})
        return SignedPost(
            d["url"], dict(d["fields"]), d["keyPrefix"], datetime.fromisoformat(d["expiresAt"])
        )

    def locations(self) -> dict[str, Any]:
        """``{"hosts": [...], "input": uri, "output": uri | None}``."""
        return self.call("GET", "/hosts")

    def report_progress(
        self,
        stage: str | None,
        done: int = 0,
        total: int | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Progress into the run's status; ``metrics`` (see BrokerProgress) go to the
        operator's counters. ``stage=None``: the counters only, the status is untouched."""
        body: dict[str, Any] = {}
        if stage is not None:
            body = {"stage": stage[:63], "done": done, "total": total}
        if metrics is not None:
            body["metrics"] = dict(metrics)
        self.call("POST", "/progress", body)


class BrokerLocation(Storage):
    """A run's input or output as the broker serves it (keys relative, as everywhere)."""

    scheme = "broker"

    def __init__(self, client: BrokerClient, uri: str, *, writable: bool) -> None:
        super().__init__("", "", writable=writable)
        self.client = client
        self._uri = uri
        self._urls: OrderedDict[str, SignedURL] = OrderedDict()
        self._lock = threading.Lock()
        self.host_names: frozenset[str] = frozenset()

    def uri(self, key: str = "") -> str:
        return self._uri + key

    def list_page(
        self, token: str | None = None, page_size: int = 1000
    ) -> tuple[list[ObjectInfo], str | None]:
        objects, nxt = self.client.input_page(token, page_size)
        with self._lock:
            for info, url in objects:
                self._urls[info.key] = url
                self._urls.move_to_end(info.key)
            while len(self._urls) > URL_CACHE:
                self._urls.popitem(last=False)
        return [info for info, _ in objects], nxt

    def cached_get(self, key: str) -> SignedURL | None:
        with self._lock:
            url = self._urls.pop(key, None)  # used once: the refresh hook handles expiry
        if url is None or url.expires_within(REFRESH_MARGIN):
            return None
        return url

    def _sign(
        self, method: str, key: str, full_key: str, lifetime: timedelta, content_type: str | None
    ) -> SignedURL:
        if method == "GET":
            return self.client.sign_inputs([key])[0]
        return self.client.sign_uploads([key], [content_type])[0]

    def hosts(self) -> frozenset[str]:
        return self.host_names


class BrokerSigner(RunSigner):
    """The RunSigner API, answered by the broker."""

    def __init__(self, client: BrokerClient, *, output: bool) -> None:
        info = client.locations()
        hosts = frozenset(str(h) for h in info.get("hosts") or ())
        inp = BrokerLocation(client, str(info.get("input") or "broker:input/"), writable=False)
        out = None
        if output:
            out = BrokerLocation(client, str(info.get("output") or "broker:output/"), writable=True)
            out.host_names = hosts
        inp.host_names = hosts
        super().__init__(inp, out)
        self.client = client
        self.storage_hosts = hosts

    def sign_inputs(self, keys: Sequence[str]) -> list[SignedURL]:
        self._check_count(keys)
        assert isinstance(self.input, BrokerLocation)
        if len(keys) == 1:
            hit = self.input.cached_get(keys[0])
            if hit is not None:
                return [hit]
        return self.client.sign_inputs(keys)

    def sign_uploads(
        self, keys: Sequence[str], content_types: Iterable[str | None] | None = None
    ) -> list[SignedURL]:
        if self.output is None:
            raise OutsidePrefixError(self.input.uri(), "this run has no output location")
        self._check_count(keys)
        return self.client.sign_uploads(keys, content_types)

    def sign_output_reads(self, keys: Sequence[str]) -> list[SignedURL]:
        if self.output is None:
            raise OutsidePrefixError(self.input.uri(), "this run has no output location")
        self._check_count(keys)
        return self.client.sign_output_reads(keys)

    def sign_upload_post(self, key_prefix: str = "") -> SignedPost:
        return self.client.sign_upload_post(key_prefix)

    def allowed_hosts(self) -> frozenset[str]:
        return self.storage_hosts


def client_from_env(env: Mapping[str, str]) -> BrokerClient | None:
    """A client for the run's broker when ``SIFT_BROKER_URL`` is set (a cluster run)."""
    url = env.get("SIFT_BROKER_URL")
    if not url:
        return None
    missing = [
        k
        for k in ("SIFT_BROKER_TOKEN_FILE", "SIFT_RUN_NAMESPACE", "SIFT_RUN_NAME")
        if not env.get(k)
    ]
    if missing:
        raise BrokerError(
            0, "BadEnvironment", f"SIFT_BROKER_URL is set but not {', '.join(missing)}"
        )
    ca = env.get("SIFT_BROKER_CA_FILE") or (
        DEFAULT_CA_FILE if Path(DEFAULT_CA_FILE).exists() else None
    )
    return BrokerClient(
        url,
        env["SIFT_BROKER_TOKEN_FILE"],
        namespace=env["SIFT_RUN_NAMESPACE"],
        name=env["SIFT_RUN_NAME"],
        ca_file=ca,
    )


def broker_signer_from_env(
    env: Mapping[str, str], *, output: bool
) -> tuple[BrokerSigner, BrokerClient] | None:
    """The broker's signer when ``SIFT_BROKER_URL`` is set (a cluster run), else None."""
    client = client_from_env(env)
    if client is None:
        return None
    try:
        return BrokerSigner(client, output=output), client
    except BaseException:
        client.close()
        raise


def fetcher_for(signer: BrokerSigner, extra_hosts: Iterable[str] = (), **kwargs: Any) -> Fetcher:
    """A Fetcher for the broker's storage hosts that re-signs through the broker."""

    def refresh(old: SignedURL) -> SignedURL:
        if old.method == "GET":
            return signer.client.sign_inputs([old.key])[0]
        return signer.client.sign_uploads([old.key], [old.headers.get("Content-Type")])[0]

    return Fetcher(set(signer.allowed_hosts()) | set(extra_hosts), refresh=refresh, **kwargs)


class BrokerProgress:
    """A progress listener that reports (stage, done, total) and the worker's counters.

    Called for every advanced sample: it only keeps the latest value; a background
    thread sends it at most every ``interval`` seconds (and at once on a new stage), so
    a slow broker never slows the pipeline. Failures are logged once, never raised.

    Each report also carries the counters of :mod:`sift_worker.fetch` (read only when a
    report is sent), counted from this reporter's start, with the values the broker
    last acknowledged and a random session id, so the operator counts every increase
    once (``operator/sift_operator/broker/worker_metrics.py``). Counters that moved
    while the progress did not are sent alone; :meth:`close` sends the last values.
    """

    def __init__(
        self,
        client: BrokerClient,
        interval: float = 2.0,
        counters: Callable[[], dict[str, int]] = counter_values,
    ) -> None:
        self.client = client
        self.interval = interval
        self._counters = counters
        self._start = counters()
        self._acked: dict[str, int] = dict.fromkeys(self._start, 0)
        self.session = uuid.uuid4().hex
        self._latest: tuple[str, int, int | None] | None = None
        self._stage: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self.sent = 0
        self._thread = threading.Thread(target=self._loop, name="broker-progress", daemon=True)
        self._thread.start()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        self._latest = (stage, done, total)
        if stage != self._stage or (total is not None and done >= total):
            self._stage = stage
            self._wake.set()

    def _values(self) -> dict[str, int]:
        now = self._counters()
        return {name: max(0, value - self._start.get(name, 0)) for name, value in now.items()}

    def _send(self) -> None:
        latest, self._latest = self._latest, None
        values = self._values()
        if latest is None and values == self._acked:
            return  # nothing new
        metrics = {"session": self.session, "counters": values, "acknowledged": self._acked}
        try:
            if latest is None:
                self.client.report_progress(None, metrics=metrics)
            else:
                self.client.report_progress(*latest, metrics=metrics)
            self._acked = values
            self.sent += 1
        except (BrokerError, StorageError) as exc:
            if not self._warned:
                self._warned = True
                import logging

                logging.getLogger("sift.broker").warning("progress not reported: %s", exc)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return  # close() sends the last report
            self._send()

    def close(self) -> None:
        """Stop the thread and send the last progress and counter values."""
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._send()
        self.client.close()
