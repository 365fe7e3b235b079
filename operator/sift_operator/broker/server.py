"""The broker's HTTPS API (aiohttp, in the operator process): signed URLs for one run.

Versioned under ``/v1/runs/{namespace}/{name}/`` (see ``docs/broker.md``):

* ``GET  inputs?pageToken=&pageSize=`` — a page of input objects with signed GET URLs;
* ``POST inputs/sign`` ``{"keys": [...]}`` — re-sign input keys (expiry refresh);
* ``POST uploads/sign`` ``{"keys": [...], "contentTypes": [...]}`` — signed PUTs under
  the run's output prefix;
* ``POST outputs/sign`` ``{"keys": [...]}`` — signed GETs under the run's output prefix
  (a checkpoint or report outbox an earlier attempt of the same run wrote);
* ``POST uploads/post`` ``{"keyPrefix": ""}`` — an S3 POST policy (``starts-with``);
* ``GET  hosts`` — the storage hosts the worker may reach (its egress allowlist);
* ``POST progress`` ``{"stage", "done", "total", "metrics"?}`` — written into the run's
  ``status.progress``, at most once per ``progress_interval`` per run (the latest wins);
  ``metrics`` (the worker's counters) are counted at once (``worker_metrics.py``).

Every request carries the worker's projected token (``Authorization: Bearer``). The
token's ServiceAccount must be the run's (``sift-<name>`` in the run's namespace), the
run must be active, and keys must stay inside the run's locations. Answers never echo
a token; signed URLs appear in the response bodies only, and no log line holds one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from aiohttp import web
from sift_worker.api.v1alpha1 import Progress
from sift_worker.storage import (
    AccessDeniedError,
    BadCredentialsError,
    BucketNotFoundError,
    EmptyInputError,
    ObjectNotFoundError,
    OutsidePrefixError,
    SignedURL,
    StorageError,
)

from sift_operator import names
from sift_operator.broker import metrics, worker_metrics
from sift_operator.broker.auth import (
    AuthError,
    Identity,
    PodBinding,
    PodIndex,
    PodLookupError,
    PodRefusedError,
    TokenReviewer,
)
from sift_operator.broker.runs import RunGoneError, RunInactiveError, RunSigners, SignerFor

__all__ = ["Broker", "BrokerConfig", "signed_json"]

log = logging.getLogger("sift.broker")

API = "/v1/runs/{namespace}/{name}"
MAX_PAGE = 1000
_STATUS_BY_ERROR: tuple[tuple[type[StorageError], int], ...] = (
    (OutsidePrefixError, 403),
    (BucketNotFoundError, 404),
    (ObjectNotFoundError, 404),
    (EmptyInputError, 404),
    (BadCredentialsError, 502),
    (AccessDeniedError, 502),
)


class _Kube(Protocol):
    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]: ...

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...

    async def merge_patch(
        self, obj: Any, patch: Any, subresource: str | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BrokerConfig:
    audience: str = "sift.dev/broker"
    url_lifetime: timedelta = timedelta(minutes=10)
    body_limit: int = 64 * 1024
    request_timeout: float = 30.0
    progress_interval: float = 5.0
    token_cache_seconds: float = 30.0


def signed_json(url: SignedURL) -> dict[str, Any]:
    return {
        "method": url.method,
        "url": url.url,
        "key": url.key,
        "expiresAt": url.expires_at.isoformat(),
        "headers": dict(url.headers),
    }


class _RefusedError(Exception):
    def __init__(self, status: int, reason: str, kind: str = "Refused", uri: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind
        self.uri = uri


@dataclass
class _Pending:
    last_write: float = 0.0
    report: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None
    writes: int = field(default=0)


class Broker:
    """The broker's request handling; ``app()`` is the aiohttp application."""

    def __init__(
        self, kube: _Kube, config: BrokerConfig | None = None, *, pods: PodIndex | None = None
    ) -> None:
        self.kube = kube
        self.config = config or BrokerConfig()
        self.reviewer = TokenReviewer(
            kube, self.config.audience, ttl=self.config.token_cache_seconds
        )
        # ``pods``: the operator's kopf index of its pods (None: every pod from the API)
        self.pod_binding = PodBinding(kube, pods, ttl=self.config.token_cache_seconds)
        self.signers = RunSigners(kube, lifetime=self.config.url_lifetime)
        self._progress: dict[str, _Pending] = {}
        self.worker_counters = worker_metrics.WorkerCounters(metrics.WORKER_COUNTERS)

    # --- application ----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.body_limit, middlewares=[self._errors])
        app.router.add_get("/healthz", self._healthz)
        add = app.router.add_route
        add("GET", API + "/inputs", self._wrap(self._inputs), name="inputs")
        add("POST", API + "/inputs/sign", self._wrap(self._sign_inputs), name="inputs_sign")
        add("POST", API + "/uploads/sign", self._wrap(self._sign_uploads), name="uploads_sign")
        add("POST", API + "/uploads/post", self._wrap(self._upload_post), name="uploads_post")
        add("POST", API + "/outputs/sign", self._wrap(self._sign_outputs), name="outputs_sign")
        add("GET", API + "/hosts", self._wrap(self._hosts), name="hosts")
        add("POST", API + "/progress", self._wrap(self._report_progress), name="progress")
        app.on_cleanup.append(self._flush_all)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.monotonic()
        response = await self._answer(request, handler)
        endpoint = request.match_info.route.name
        if endpoint in metrics.ENDPOINTS:
            outcome = "ok" if response.status < 400 else str(getattr(response, "kind", "error"))
            metrics.REQUESTS.labels(endpoint, outcome).inc()
            metrics.REQUEST_DURATION.observe(time.monotonic() - started)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except _RefusedError as exc:
            return _error(exc.status, exc.kind, exc.reason, exc.uri)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "BodyTooLarge", f"request body over {self.config.body_limit} bytes")
        except web.HTTPException as exc:
            return _error(exc.status, "HTTPError", exc.reason)
        except TimeoutError:
            return _error(504, "Timeout", "the broker timed out")
        except Exception as exc:  # never the message: it might hold anything
            log.error("broker error on %s: %s", request.path, type(exc).__name__)
            return _error(500, "InternalError", "internal broker error")

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def _wrap(
        self, fn: Callable[[web.Request, SignerFor], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            async def work() -> dict[str, Any]:
                target = await self._authorize(request)
                try:
                    return await fn(request, target)
                except StorageError as exc:
                    for cls, status in _STATUS_BY_ERROR:
                        if isinstance(exc, cls):
                            raise _RefusedError(status, exc.reason, cls.__name__, exc.uri) from None
                    raise _RefusedError(502, exc.reason, "StorageError", exc.uri) from None
                except ValueError as exc:
                    raise _RefusedError(400, str(exc)[:300], "BadRequest") from None

            body = await asyncio.wait_for(work(), self.config.request_timeout)
            return web.json_response(body, headers={"Cache-Control": "no-store"})

        return handler

    # --- authorization ----------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> SignerFor:
        namespace = request.match_info["namespace"]
        name = request.match_info["name"]
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _RefusedError(401, "a bearer token is required", "Unauthenticated")
        try:
            ident = await self.reviewer.identify(token.strip())
        except AuthError as exc:
            log.info("refused %s %s: %s", request.method, request.path, exc)
            raise _RefusedError(401, str(exc), "Unauthenticated") from None
        self._check_identity(ident, namespace, name, request)
        try:
            run = await self.signers.read_run(namespace, name)
            await self._check_pod(ident, name, str(run["metadata"].get("uid") or ""), request)
            return await self.signers.signer(namespace, name)
        except RunGoneError as exc:
            raise _RefusedError(404, str(exc), "RunNotFound") from None
        except RunInactiveError as exc:
            raise _RefusedError(403, str(exc), "RunInactive") from None

    async def _check_pod(
        self, ident: Identity, name: str, run_uid: str, request: web.Request
    ) -> None:
        """The token's pod must be a live pod of the run's Job (see ``PodBinding``)."""
        try:
            await self.pod_binding.check(ident, name, run_uid)
        except PodRefusedError as exc:
            log.warning("refused %s %s: %s", request.method, request.path, exc)
            raise _RefusedError(403, str(exc), "Forbidden") from None
        except PodLookupError as exc:
            log.warning("could not check the pod for %s %s: %s", request.method, request.path, exc)
            raise _RefusedError(503, str(exc), "Unavailable") from None

    @staticmethod
    def _check_identity(ident: Identity, namespace: str, name: str, request: web.Request) -> None:
        if ident.namespace != namespace or ident.service_account != names.child_name(name):
            log.warning(
                "refused %s %s: ServiceAccount %s/%s is not run %s/%s's",
                request.method,
                request.path,
                ident.namespace,
                ident.service_account,
                namespace,
                name,
            )
            raise _RefusedError(
                403,
                f"ServiceAccount {ident.namespace}/{ident.service_account} may not act for "
                f"run {namespace}/{name}",
                "Forbidden",
            )

    # --- endpoints --------------------------------------------------------------------

    async def _inputs(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        token = request.query.get("pageToken") or None
        if token is not None and len(token) > 4096:
            raise _RefusedError(400, "pageToken is too long", "BadRequest")
        try:
            size = int(request.query.get("pageSize", str(MAX_PAGE)))
        except ValueError:
            raise _RefusedError(400, "pageSize must be an integer", "BadRequest") from None
        if not 1 <= size <= MAX_PAGE:
            raise _RefusedError(400, f"pageSize must be 1..{MAX_PAGE}", "BadRequest")
        page = await asyncio.to_thread(target.signer.list_inputs, token, size)
        return {
            "objects": [{"size": info.size, **signed_json(url)} for info, url in page.objects],
            "nextPageToken": page.next_token,
            "uri": target.signer.input.uri(),
        }

    async def _sign_inputs(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        body = await _json_body(request)
        keys = _str_list(body, "keys")
        urls = await asyncio.to_thread(target.signer.sign_inputs, keys)
        return {"urls": [signed_json(u) for u in urls]}

    async def _sign_uploads(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        body = await _json_body(request)
        keys = _str_list(body, "keys")
        types = body.get("contentTypes")
        if types is not None:
            if not isinstance(types, list) or len(types) != len(keys):
                raise _RefusedError(400, "contentTypes must match keys", "BadRequest")
            if not all(t is None or (isinstance(t, str) and len(t) <= 255) for t in types):
                raise _RefusedError(400, "contentTypes must be strings or null", "BadRequest")
        urls = await asyncio.to_thread(target.signer.sign_uploads, keys, types)
        return {"urls": [signed_json(u) for u in urls], "uri": _output_uri(target)}

    async def _sign_outputs(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        body = await _json_body(request)
        keys = _str_list(body, "keys")
        urls = await asyncio.to_thread(target.signer.sign_output_reads, keys)
        return {"urls": [signed_json(u) for u in urls]}

    async def _upload_post(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        body = await _json_body(request)
        prefix = body.get("keyPrefix", "")
        if not isinstance(prefix, str) or len(prefix) > 1024:
            raise _RefusedError(400, "keyPrefix must be a string", "BadRequest")
        if prefix:
            from sift_worker.storage.base import check_key

            check_key(prefix + "x", _output_uri(target))
        post = await asyncio.to_thread(target.signer.sign_upload_post, prefix)
        return {
            "url": post.url,
            "fields": dict(post.fields),
            "keyPrefix": post.key_prefix,
            "expiresAt": post.expires_at.isoformat(),
        }

    async def _hosts(self, _: web.Request, target: SignerFor) -> dict[str, Any]:
        hosts = await asyncio.to_thread(target.signer.allowed_hosts)
        out = _output_uri(target)
        return {"hosts": sorted(hosts), "input": target.signer.input.uri(), "output": out or None}

    async def _report_progress(self, request: web.Request, target: SignerFor) -> dict[str, Any]:
        body = await _json_body(request)
        counted = None  # the worker's counters (worker_metrics.py); without a stage: only them
        if "metrics" in body:
            try:
                counted = worker_metrics.parse_report(body["metrics"])
            except worker_metrics.MetricsReportError as exc:
                raise _RefusedError(400, str(exc), "BadRequest") from None
        report: dict[str, Any] | None = None
        if counted is None or {"stage", "done", "total"} & body.keys():
            stage, done, total = body.get("stage"), body.get("done", 0), body.get("total")
            if not isinstance(stage, str) or not stage or len(stage) > 63:
                raise _RefusedError(400, "stage must be a string of 1..63 characters", "BadRequest")
            if not _count(done) or not (total is None or _count(total)):
                raise _RefusedError(
                    400, "done and total must be non-negative integers", "BadRequest"
                )
            report = {"stage": stage, "done": done}
            if total is not None:
                report["total"] = total
                if total > 0:
                    report["percent"] = max(0, min(100, math.floor(100 * done / total)))
            Progress.model_validate(report)
        if counted is not None:  # the body is valid as a whole: count it now, not rate-limited
            self.worker_counters.record(target.uid, counted)
        if report is not None:
            self._queue_progress(target, report)
        return {"accepted": True}

    # --- progress, rate-limited per run -------------------------------------------------

    def _queue_progress(self, target: SignerFor, report: dict[str, Any]) -> None:
        slot = self._progress.setdefault(target.uid, _Pending())
        slot.report, slot.run = report, target.run
        if slot.task is not None and not slot.task.done():
            return  # a write is scheduled: it takes the latest report
        wait = max(0.0, slot.last_write + self.config.progress_interval - time.monotonic())
        slot.task = asyncio.get_running_loop().create_task(self._write_later(target.uid, wait))

    async def _write_later(self, uid: str, wait: float) -> None:
        if wait > 0:
            await asyncio.sleep(wait)
        await self._write(uid)

    async def _write(self, uid: str) -> None:
        slot = self._progress.get(uid)
        if slot is None or slot.report is None or slot.run is None:
            return
        report, slot.report = slot.report, None
        slot.last_write = time.monotonic()
        slot.writes += 1
        try:
            await self.kube.merge_patch(slot.run, {"status": {"progress": report}}, "status")
        except Exception as exc:
            log.warning(
                "could not write progress of run %s/%s: %s",
                slot.run["metadata"]["namespace"],
                slot.run["metadata"]["name"],
                type(exc).__name__,
            )
        if len(self._progress) > 4096:  # forget runs idle for long
            cutoff = time.monotonic() - 600
            self._progress = {k: v for k, v in self._progress.items() if v.last_write > cutoff}

    async def _flush_all(self, _: web.Application) -> None:
        for slot in list(self._progress.values()):
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()


class _ErrorResponse(web.Response):
    kind = "error"  # the error kind: a bounded label of the requests metric


def _error(status: int, kind: str, reason: str, uri: str = "") -> web.Response:
    body: dict[str, Any] = {"error": {"kind": kind, "reason": reason}}
    if uri:
        body["error"]["uri"] = uri
    response = _ErrorResponse(
        text=json.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
    response.kind = kind
    return response


def _output_uri(target: SignerFor) -> str:
    out = target.signer.output
    return out.uri() if out is not None else ""


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > request.app._client_max_size:
        raise web.HTTPRequestEntityTooLarge(
            max_size=request.app._client_max_size, actual_size=request.content_length
        )
    raw = await request.read()  # bounded by client_max_size
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise _RefusedError(400, "the body is not JSON", "BadRequest") from None
    if not isinstance(body, dict):
        raise _RefusedError(400, "the body must be a JSON object", "BadRequest")
    return body


def _str_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _RefusedError(400, f"{name} must be a non-empty list of strings", "BadRequest")
    if len(value) > MAX_PAGE:
        raise _RefusedError(400, f"at most {MAX_PAGE} {name} per request", "BadRequest")
    return value
