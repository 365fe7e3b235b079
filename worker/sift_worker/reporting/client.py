"""The results-API client: one host, bearer auth, gzip bodies, retries that give up cleanly.

* **One host.** Requests go only to paths under the configured ``/v1`` base URL, through
  :class:`OneHostTransport`, which refuses any other host (``EgressRefusedError``, the
  egress metric of :mod:`sift_worker.fetch`); redirects are not followed. The run's
  allowlist transport can be layered under it with ``transport=``.
* **Retries.** 5xx, 429 (honouring ``Retry-After``, capped), timeouts and connection
  errors are retried with exponential backoff and full jitter, within an attempt and a
  time budget; then :class:`ReportUnavailableError`. Any other 4xx is not retried:
  :class:`ReportRejectedError`.
* **Secrets.** The token only ever goes into the ``Authorization`` header. Errors name the
  method, the endpoint path and the status (plus the API's short error code), never the
  token or a header; the token is also scrubbed from any message text, just in case.
"""

from __future__ import annotations

import gzip
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from sift_worker.fetch import EGRESS_REFUSED, EgressRefusedError, retry_after_seconds
from sift_worker.logs import redact
from sift_worker.reporting.schema import RunState

log = logging.getLogger("sift.reporting")


class ReportError(Exception):
    """A report request failed; the message names the endpoint, never the token."""

    def __init__(self, method: str, path: str, reason: str, status: int | None = None) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        super().__init__(f"results API {method} {path}: {reason}")


class ReportRejectedError(ReportError):
    """A 4xx other than 429: retrying the same request cannot help."""


class ReportUnavailableError(ReportError):
    """The API stayed unreachable or failing through every retry: try again later."""


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries within ``budget`` seconds; backoff ``min(cap, base * 2**n)``, jittered."""

    attempts: int = 8
    budget: float = 300.0
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


class _RetryError(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def _error_code(resp: httpx.Response) -> str:
    """`` (code): message`` from an Error body, the message cut to 300 characters."""
    try:
        data = resp.json()
    except (ValueError, UnicodeDecodeError):
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    if not (isinstance(code, str) and code.isidentifier()):
        return ""
    message = data.get("message")
    detail = f": {redact(message)[:300]}" if isinstance(message, str) and message else ""
    return f" ({code}){detail}"


class OneHostTransport(httpx.BaseTransport):
    """The egress guard for the results API: the API's own host and port, nothing else.

    Refusals raise :class:`~sift_worker.fetch.EgressRefusedError` and count in
    ``sift_worker_egress_refused_total``, as the data plane's guard does. An outer guard
    (the run's allowlist) can be passed as ``inner``.
    """

    def __init__(self, base_url: str, inner: httpx.BaseTransport) -> None:
        url = httpx.URL(base_url)
        self._host = url.host.lower()
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        host = request.url.host.lower()
        if (host, port) != (self._host, self._port):
            EGRESS_REFUSED.inc()
            log.warning("egress refused: host %s is not the results API", host)
            raise EgressRefusedError(host)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class ResultsClient:
    """Talks to one results API. Close it (or use ``with``)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token or any(c.isspace() for c in token):
            raise ValueError("the results API token is empty or contains whitespace")
        self.base_url = base_url.rstrip("/") + "/v1"
        self._token = token
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._client = httpx.Client(
            transport=OneHostTransport(base_url, transport or httpx.HTTPTransport(retries=0)),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
            headers={"User-Agent": "sift-worker"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ResultsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the contract --------------------------------------------------------------------

    def create_run(self, run_uid: str, body: str) -> RunState:
        resp = self.request("PUT", f"/runs/{run_uid}", body)
        return RunState.model_validate_json(resp)

    def heartbeat(self, run_uid: str, body: str) -> None:
        self.request("POST", f"/runs/{run_uid}/heartbeats", body)

    def put_chunk(self, run_uid: str, index: int, body: str, key: str) -> None:
        self.request("PUT", f"/runs/{run_uid}/chunks/{index}", body, idempotency_key=key)

    def complete(self, run_uid: str, body: str) -> RunState:
        return RunState.model_validate_json(self.request("POST", f"/runs/{run_uid}/complete", body))

    # --- transport ------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>")

    def request(
        self, method: str, path: str, body: str, *, idempotency_key: str | None = None
    ) -> bytes:
        """Send one JSON body (gzipped) with retries; the response body on 2xx."""
        shown = f"/v1{path}"
        data = gzip.compress(body.encode("utf-8"), mtime=0)
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
        }
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        started = time.monotonic()
        last = ""
        for attempt in range(self.retry.attempts):
            try:
                return self._once(method, path, shown, data, headers)
            except _RetryError as exc:
                last = exc.reason
                wait = (
                    min(exc.wait, self.retry.max_retry_after)
                    if exc.wait is not None
                    else self.retry.backoff(attempt)
                )
                if attempt + 1 >= self.retry.attempts or (
                    time.monotonic() - started + wait > self.retry.budget
                ):
                    break
                log.info(
                    "results API %s %s: %s; retrying in %.1f s (attempt %d of %d)",
                    method,
                    shown,
                    last,
                    wait,
                    attempt + 1,
                    self.retry.attempts,
                )
                self._sleep(wait)
        raise ReportUnavailableError(
            method,
            shown,
            f"gave up after {attempt + 1} attempts in {time.monotonic() - started:.0f} s: {last}",
        )

    def _once(
        self, method: str, path: str, shown: str, data: bytes, headers: dict[str, str]
    ) -> bytes:
        try:
            resp = self._client.request(method, self.base_url + path, content=data, headers=headers)
        except httpx.TimeoutException as exc:
            raise _RetryError(f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _RetryError(f"connection error ({type(exc).__name__})") from None
        except EgressRefusedError as exc:
            raise ReportRejectedError(method, shown, str(exc)) from None
        status = resp.status_code
        if status < 300:
            return resp.content
        code = self._scrub(_error_code(resp))
        if status == 429 or status >= 500:
            raise _RetryError(
                f"HTTP {status}{code}", retry_after_seconds(resp.headers.get("retry-after"))
            )
        if 300 <= status < 400:
            raise ReportRejectedError(
                method, shown, f"HTTP {status}: redirects are not followed", status
            )
        hint = {401: "the token was rejected", 403: "the token may not do this"}.get(status, "")
        raise ReportRejectedError(
            method, shown, f"HTTP {status}{code}{': ' + hint if hint else ''}", status
        )


def read_token(env: Mapping[str, str]) -> str:
    """The token: ``SIFT_RESULTS_TOKEN_FILE`` (a mounted Secret key) or ``SIFT_RESULTS_TOKEN``."""
    path = env.get("SIFT_RESULTS_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ValueError(
                f"SIFT_RESULTS_TOKEN_FILE: cannot read the token file: {exc.strerror}"
            ) from None
    token = env.get("SIFT_RESULTS_TOKEN", "")
    if not token:
        raise ValueError(
            "no results API token: set SIFT_RESULTS_TOKEN_FILE (a file holding the token) "
            "or SIFT_RESULTS_TOKEN"
        )
    return str(token).strip()
