"""The worker's one HTTP client: egress guard, pooled connections, retries, URL refresh.

Every outgoing request of the worker's data plane goes through a :class:`Fetcher`:

* **Egress guard.** A request to a host that is not on the run's allowlist (storage
  hosts from the signer/broker, the broker, the results API) is refused before a
  connection is opened: :class:`EgressRefusedError` names the host (never a path or
  query) and ``sift_worker_egress_refused_total`` counts refusals. Redirects are not
  followed, so a storage server cannot send the worker elsewhere.
* **Pooling and bounded concurrency.** Keep-alive connections
  (:mod:`sift_worker.connections`: libcurl, about a quarter of httpx's CPU per
  object), at most ``concurrency`` requests in flight (a semaphore; threads beyond it
  wait).
* **Retries.** 5xx, 429, timeouts and connection errors are retried with exponential
  backoff and full jitter (tenacity), honouring ``Retry-After``, within an attempt and a
  time budget; then :class:`FetchError` names the object and the last problem.
* **Refresh.** A URL about to expire is re-signed through the ``refresh`` callback (the
  broker, or the in-process signer) before it is used; a 400/403 that says "expired"
  triggers one refresh too.
* **Secrets.** Signed URLs carry credentials in their query strings: messages carry
  the object's name, never the URL; the loggers of the HTTP stacks get the redacting
  filter of :mod:`sift_worker.logs`, so even their debug lines drop query strings.

Bodies are read into memory (bounded by ``max_bytes``) and handed to the decoder as
bytes: no temporary file per object.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from urllib.parse import SplitResult, urlsplit

from prometheus_client import CollectorRegistry, Counter
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from sift_worker.connections import BodyTooLargeError, ConnectionPool, Reply, TransportError
from sift_worker.logs import RedactingFilter, redact
from sift_worker.metric_names import WORKER_COUNTERS, metric_name
from sift_worker.storage.base import SignedURL

__all__ = [
    "COUNTERS",
    "REGISTRY",
    "EgressRefusedError",
    "FetchError",
    "Fetcher",
    "ObjectGoneError",
    "RetryPolicy",
    "counter_values",
    "install_redaction",
    "serve_metrics",
]

log = logging.getLogger("sift.fetch")

REGISTRY = CollectorRegistry(auto_describe=True)
# the counters a worker reports to the operator (BrokerProgress; docs/observability.md)
COUNTERS: dict[str, Counter] = {
    name: Counter(metric_name(name), doc, registry=REGISTRY)
    for name, doc in WORKER_COUNTERS.items()
}
EGRESS_REFUSED = COUNTERS["egress_refused"]
FETCH_RETRIES = COUNTERS["fetch_retries"]
FETCH_FAILURES = COUNTERS["fetch_failures"]
URL_REFRESHES = COUNTERS["url_refreshes"]


def counter_values() -> dict[str, int]:
    """Every reported counter's value now (read when a report is sent, not per request)."""
    samples = {s.name: s.value for family in REGISTRY.collect() for s in family.samples}
    return {name: int(samples.get(metric_name(name) + "_total", 0)) for name in COUNTERS}


def serve_metrics(port: int, address: str = "127.0.0.1") -> tuple[int, Callable[[], None]]:
    """Serve :data:`REGISTRY` on ``address:port`` (a local run's ``--metrics-port``).

    Returns the bound port (``0`` picks one) and a function that stops the server.
    """
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=address, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return server.server_port, stop


_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "urllib3",
    "urllib3.connectionpool",
    "botocore",
    "botocore.endpoint",
    "botocore.auth",
    "azure",
    "azure.core.pipeline.policies.http_logging_policy",
    "google.auth",
    "google.cloud.storage",
)
_REDACTION_INSTALLED = False


# Debug lines of these loggers print canonical requests, credentials scopes, headers
# and bodies (not URLs, so redaction cannot catch them): below WARNING they are dropped.
_QUIET_BELOW_WARNING = (
    "botocore.auth",
    "botocore.endpoint",
    "botocore.parsers",
    "botocore.hooks",
    "botocore.credentials",
    "botocore.httpsession",
    "botocore.utils",
    "urllib3.connectionpool",
    "azure.core.pipeline.policies.http_logging_policy",
)


class _DropDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def install_redaction() -> None:
    """Filter the HTTP stacks' loggers (logger filters run before any handler)."""
    global _REDACTION_INSTALLED
    if _REDACTION_INSTALLED:
        return
    for name in _QUIET_BELOW_WARNING:
        logging.getLogger(name).addFilter(_DropDebug())
    # httpx logs every request at INFO: one line per object is noise (and CPU) in a run
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).addFilter(RedactingFilter())
    _REDACTION_INSTALLED = True


class EgressRefusedError(Exception):
    """A request to a host that is not on the run's allowlist."""

    def __init__(self, host: str, why: str | None = None) -> None:
        self.host = host
        super().__init__(
            f"egress refused: host {host!r}: {why}"
            if why
            else f"egress refused: host {host!r} is not on this run's allowlist "
            "(storage, broker and results API hosts only)"
        )


class FetchError(Exception):
    """A request failed for good; ``name`` is the object (a key or a URI), never a URL."""

    def __init__(self, name: str, reason: str, status: int | None = None) -> None:
        self.name = name
        self.reason = redact(reason)
        self.status = status
        super().__init__(f"{name}: {self.reason}")


class ObjectGoneError(FetchError):
    """404: the object was listed but does not exist (any more)."""


class _RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _ExpiredError(Exception):
    pass


class RetryPolicy:
    """Attempts and time budget; backoff ``min(cap, base * 2**n)`` with full jitter."""

    def __init__(
        self,
        attempts: int = 6,
        budget: float = 120.0,
        base: float = 0.25,
        cap: float = 10.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.attempts = attempts
        self.budget = budget
        self.base = base
        self.cap = cap
        self.max_retry_after = max_retry_after

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return random.uniform(0, min(self.cap, self.base * 2 ** (state.attempt_number - 1)))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta or HTTP date), None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


_UNSAFE_IN_URL = frozenset("\\ \t\r\n")


def _plain(url: str, parts: SplitResult) -> bool:
    """Whether the guard's parser and libcurl's surely see the same host: http(s), no
    user info, a numeric port if any, no backslash or white space (signed URLs never
    have them)."""
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and "@" not in parts.netloc
        and not _UNSAFE_IN_URL.intersection(url)
    )


def _origin(url: str) -> str | None:
    """``scheme://authority/`` where the authority ends at a slash (else None): two URLs
    that start with the same one name the same host and port to any parser."""
    start = url.find("://")
    end = url.find("/", start + 3) if start > 0 else -1
    if end < 0:
        return None
    origin = url[: end + 1]
    return None if "?" in origin or "#" in origin else origin


_MAX_ORIGINS = 64
_EXPIRED_MARKERS = (b"expired", b"Expired", b"ExpiredToken", b"not valid at this time")

Refresh = Callable[[SignedURL], SignedURL]
"""Re-sign a URL for the same key and method (the broker, or the in-process signer)."""


class Fetcher:
    """The guarded, pooled, retrying HTTP client. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        allowed_hosts: Iterable[str],
        *,
        concurrency: int = 16,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        refresh: Refresh | None = None,
        refresh_margin: timedelta = timedelta(seconds=60),
        max_bytes: int = 1024**3,
    ) -> None:
        install_redaction()
        self._allow = self._parse_allowlist(allowed_hosts)
        self._origins: set[str] = set()  # origins of URLs the guard let through
        self.retry = retry or RetryPolicy()
        self.refresh = refresh
        self.refresh_margin = refresh_margin
        self.max_bytes = max_bytes
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._pool = ConnectionPool(
            timeout=timeout, connect_timeout=connect_timeout, max_idle=max(1, concurrency)
        )

    # --- allowlist ----------------------------------------------------------------------

    @staticmethod
    def _parse_allowlist(hosts: Iterable[str]) -> set[tuple[str, int | None]]:
        out: set[tuple[str, int | None]] = set()
        for entry in hosts:
            entry = entry.strip().lower()
            if not entry:
                continue
            host, sep, port = entry.rpartition(":")
            if sep and port.isdigit() and "]" not in port:
                out.add((host.strip("[]"), int(port)))
            else:
                out.add((entry.strip("[]"), None))
        return out

    def _allowed(self, host: str, port: int | None) -> bool:
        return (host, None) in self._allow or (host, port) in self._allow

    def allow(self, hosts: Iterable[str]) -> None:
        """Add hosts (e.g. new storage hosts handed over by the broker)."""
        self._allow |= self._parse_allowlist(hosts)

    # --- requests -----------------------------------------------------------------------

    def get_bytes(self, signed: SignedURL, name: str | None = None) -> bytes:
        """GET a signed URL and return the body; ``name`` (default: the key) names errors."""
        return self._call(signed, name or signed.key, lambda url: self._get(url, signed, name))

    def put_bytes(self, signed: SignedURL, data: bytes, name: str | None = None) -> None:
        """PUT ``data`` to a signed upload URL (with the headers the signature requires)."""
        self._call(signed, name or signed.key, lambda url: self._put(url, data))

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------

    def _call(self, signed: SignedURL, name: str, send: Callable[[SignedURL], bytes]) -> bytes:
        current = [signed]
        refreshed_after_error = False

        def attempt() -> bytes:
            nonlocal refreshed_after_error
            if self.refresh is not None and current[0].expires_within(self.refresh_margin):
                current[0] = self._refresh(current[0], name)
            try:
                try:
                    return send(current[0])
                except FetchError as exc:
                    # a refusal of a URL whose own lifetime is over: expired, whatever the body
                    if exc.status in (400, 401, 403) and current[0].expires_within(timedelta(0)):
                        raise _ExpiredError() from None
                    raise
            except _ExpiredError:
                if self.refresh is None or refreshed_after_error:
                    raise FetchError(name, "the signed URL has expired", 403) from None
                refreshed_after_error = True
                current[0] = self._refresh(current[0], name)
                return send(current[0])

        def before_sleep(state: RetryCallState) -> None:
            FETCH_RETRIES.inc()
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "retrying %s %s (attempt %d): %s",
                signed.method,
                name,
                state.attempt_number,
                getattr(exc, "reason", type(exc).__name__),
            )

        with self._slots:
            started = time.monotonic()
            try:
                try:
                    return attempt()  # the common case: no retry machinery at all
                except _RetryableError as exc:
                    first: _RetryableError | None = exc

                def replay_then_attempt() -> bytes:
                    # tenacity sees the first failure as its attempt 1 (logged, counted,
                    # waited after) and makes the real attempts from 2 on
                    nonlocal first
                    if first is not None:
                        failed, first = first, None
                        raise failed
                    return attempt()

                budget = max(0.0, self.retry.budget - (time.monotonic() - started))
                retrying = Retrying(
                    retry=retry_if_exception_type(_RetryableError),
                    stop=stop_after_attempt(self.retry.attempts) | stop_after_delay(budget),
                    wait=self.retry.wait,
                    before_sleep=before_sleep,
                    reraise=True,
                )
                return retrying(replay_then_attempt)
            except _RetryableError as exc:
                FETCH_FAILURES.inc()
                raise FetchError(
                    name,
                    f"{signed.method} failed after {self.retry.attempts} attempts or "
                    f"{self.retry.budget:g} s: {exc.reason}",
                ) from None
            except _ExpiredError:
                FETCH_FAILURES.inc()
                raise FetchError(name, "the signed URL has expired", 403) from None

    def _refresh(self, old: SignedURL, name: str) -> SignedURL:
        assert self.refresh is not None
        URL_REFRESHES.inc()
        try:
            fresh = self.refresh(old)
        except Exception as exc:
            raise FetchError(name, f"re-signing failed: {redact(str(exc))}") from None
        if (fresh.method, fresh.key) != (old.method, old.key):
            raise FetchError(name, "re-signing returned a URL for another object or method")
        return fresh

    def _send(self, url: SignedURL, name: str, body: bytes | None = None) -> Reply:
        """One guarded exchange: the host is checked before a connection is opened."""
        self._guard(url.url)
        try:
            reply = self._pool.request(
                url.method, url.url, dict(url.headers), body, max_bytes=self.max_bytes
            )
        except BodyTooLargeError as exc:
            raise FetchError(name, f"object too large: {exc.size}") from None
        except TransportError as exc:
            what = "timed out" if exc.timeout else "connection error"
            raise _RetryableError(f"{what} ({exc.kind})") from None
        self._check(reply, name)
        return reply

    def permits(self, url: str) -> bool:
        """Whether the egress guard lets ``url`` through, without counting or logging a
        refusal: for a caller that sends requests itself (:mod:`sift_worker.readahead`)
        and leaves a refused one to :meth:`get_bytes`, which reports it."""
        return self._refusal(url) is None

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    def _guard(self, url: str) -> None:
        refusal = self._refusal(url)
        if refusal is None:
            return
        host, why = refusal
        EGRESS_REFUSED.inc()
        log.warning(
            "egress refused: host %s%s", host, f": {why}" if why else " is not on the allowlist"
        )
        raise EgressRefusedError(host, why)

    def _refusal(self, url: str) -> tuple[str, str | None] | None:
        """None for an allowed URL, else the host and why (None: not on the allowlist)."""
        origin = _origin(url)
        if origin in self._origins and not _UNSAFE_IN_URL.intersection(url):
            return None  # the same scheme, host and port as a URL checked in full before
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        why = (
            None
            if _plain(url, parts)
            else "not a plain http(s) URL (user info, a bad port, a backslash or white space)"
        )
        if why is not None or not self._allowed(host, parts.port):
            return host, why
        if origin is not None and len(self._origins) < _MAX_ORIGINS:
            self._origins.add(origin)
        return None

    def _get(self, url: SignedURL, signed: SignedURL, name: str | None) -> bytes:
        return self._send(url, name or signed.key).body

    def _put(self, url: SignedURL, data: bytes) -> bytes:
        self._send(url, url.key, data)
        return b""

    def _check(self, reply: Reply, name: str) -> None:
        status = reply.status
        if status < 300:
            return
        if status == 429 or status >= 500:
            raise _RetryableError(
                f"HTTP {status}", retry_after_seconds(reply.headers.get("retry-after"))
            )
        if status in (400, 401, 403):
            if any(m in reply.body[:2048] for m in _EXPIRED_MARKERS):
                raise _ExpiredError()
            raise FetchError(name, f"HTTP {status}: access refused", status)
        if status == 404:
            raise ObjectGoneError(name, "HTTP 404: the object does not exist (any more)", 404)
        raise FetchError(name, f"HTTP {status}", status)
