"""A results-API receiver implementing ``docs/results-api.openapi.yaml``, for tests and demos.

``sift-worker receiver --port P --token-file F --store DIR`` shows exactly what a run
would send: it checks the bearer token, validates every body against the payload
schema (and each chunk against the share settings its run was created with), and
stores what it accepted:

* ``DIR/runs/<runUid>/create.json``, ``chunks/<index>.json``, ``heartbeats.jsonl``,
  ``complete.json``: the accepted bodies;
* ``DIR/requests.jsonl``: one line per request (method, path, status, idempotency key).

It keeps its state in ``DIR`` only, so a restarted receiver resumes where it stopped.
Tests inject faults (:class:`Fault`: a status N times, a delay, a dropped connection).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from sift_worker.reporting.schema import (
    Chunk,
    Complete,
    Error,
    ErrorCode,
    Heartbeat,
    RunCreate,
    RunState,
    check_chunk,
)

MAX_BODY = 8 * 1024 * 1024  # compressed and decompressed
_Model = TypeVar("_Model", bound=BaseModel)
_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass
class Fault:
    """Answer matching requests with ``status`` (or a delay, or a dropped connection) ``times``."""

    method: str
    path: str  # a regex matched against the whole path
    times: int
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool = False
    location: str | None = None  # with a 3xx status: where to redirect


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._rules.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.times > 0 and rule.method == method and re.fullmatch(rule.path, path):
                    rule.times -= 1
                    return rule
        return None


def _error(status: int, code: ErrorCode, message: str, **extra: Any) -> web.Response:
    body = Error(error=code, message=message[:4096], **extra)
    headers = {"WWW-Authenticate": 'Bearer realm="sift"'} if status == 401 else None
    return web.json_response(
        body.model_dump(mode="json", by_alias=True, exclude_none=True),
        status=status,
        headers=headers,
    )


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class Store:
    """What the receiver accepted, on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def run_dir(self, uid: str) -> Path:
        return self.root / "runs" / uid

    def run(self, uid: str) -> RunCreate | None:
        path = self.run_dir(uid) / "create.json"
        return RunCreate.model_validate_json(path.read_text("utf-8")) if path.is_file() else None

    def chunk_indices(self, uid: str) -> list[int]:
        folder = self.run_dir(uid) / "chunks"
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json"))

    def chunk(self, uid: str, index: int) -> Chunk | None:
        path = self.run_dir(uid) / "chunks" / f"{index}.json"
        return Chunk.model_validate_json(path.read_text("utf-8")) if path.is_file() else None

    def chunk_key(self, uid: str, index: int) -> str | None:
        path = self.run_dir(uid) / "chunks" / f"{index}.key"
        return path.read_text("utf-8") if path.is_file() else None

    def completed(self, uid: str) -> bool:
        return (self.run_dir(uid) / "complete.json").is_file()

    def state(self, uid: str) -> RunState:
        return RunState(
            run_uid=uid,
            status="complete" if self.completed(uid) else "open",
            received_chunks=self.chunk_indices(uid),
        )

    def log(self, entry: dict[str, Any]) -> None:
        with (self.root / "requests.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def requests(self) -> list[dict[str, Any]]:
        path = self.root / "requests.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(store_dir: Path, token: str, faults: Faults | None = None) -> web.Application:
    store = Store(store_dir)
    faults = faults or Faults()
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        fault = faults.take(request.method, request.path)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.drop:  # close mid-request, before reading the body
            if request.transport is not None:
                request.transport.close()
            store.log({"method": request.method, "path": request.path, "status": 0, "key": key})
            raise ConnectionResetError("fault: connection dropped")
        if fault is not None and not fault.delay:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            code: ErrorCode = "rate_limited" if fault.status == 429 else "unavailable"
            resp: web.StreamResponse = _error(fault.status, code, "injected fault")
            if headers:
                resp.headers.update(headers)
            if fault.location:
                resp.headers["Location"] = fault.location
        else:
            auth = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(auth, expected):
                resp = _error(401, "unauthorized", "missing or invalid bearer token")
            else:
                resp = await handler(request)
        store.log(
            {"method": request.method, "path": request.path, "status": resp.status, "key": key}
        )
        return resp

    async def body(request: web.Request) -> bytes | web.Response:
        if request.content_type != "application/json":
            return _error(415, "unsupported_media_type", "Content-Type must be application/json")
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("gzip", "identity"):
            return _error(
                415, "unsupported_media_type", "Content-Encoding must be gzip or identity"
            )
        try:  # aiohttp inflates gzip bodies as it reads them, bounded by client_max_size
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"body over {MAX_BODY} bytes (decompressed)")
        except Exception:  # a broken gzip stream
            return _error(400, "invalid_payload", "the body could not be read or inflated")
        return raw

    def invalid(exc: ValidationError) -> web.Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]]
        return _error(400, "invalid_payload", "; ".join(problems))

    async def payload(request: web.Request, model: type[_Model]) -> _Model | web.Response:
        """The request body validated against ``model``, or the error to answer with."""
        raw = await body(request)
        if isinstance(raw, web.Response):
            return raw
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            return invalid(exc)

    def uid_of(request: web.Request) -> str | web.Response:
        uid = request.match_info["uid"]
        if _UID.fullmatch(uid):
            return uid
        return _error(400, "invalid_payload", "runUid must match ^[A-Za-z0-9-]{1,64}$")

    async def put_run(request: web.Request) -> web.Response:
        uid = uid_of(request)
        if isinstance(uid, web.Response):
            return uid
        create = await payload(request, RunCreate)
        if isinstance(create, web.Response):
            return create
        existing = store.run(uid)
        if existing is not None:
            if existing != create:
                return _error(409, "conflict", "the run exists with a different body")
            return web.json_response(_dump(store.state(uid)), status=200)
        _write(store.run_dir(uid) / "create.json", _json(create))
        return web.json_response(_dump(store.state(uid)), status=201)

    async def get_run(request: web.Request) -> web.Response:
        uid = uid_of(request)
        if isinstance(uid, web.Response):
            return uid
        if store.run(uid) is None:
            return _error(404, "not_found", "no such run")
        return web.json_response(_dump(store.state(uid)))

    async def heartbeat(request: web.Request) -> web.Response:
        uid = uid_of(request)
        if isinstance(uid, web.Response):
            return uid
        beat = await payload(request, Heartbeat)
        if isinstance(beat, web.Response):
            return beat
        store.run_dir(uid).mkdir(parents=True, exist_ok=True)  # may come before create
        with (store.run_dir(uid) / "heartbeats.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(_json(beat) + "\n")
        return web.Response(status=204)

    async def put_chunk(request: web.Request) -> web.Response:
        uid = uid_of(request)
        if isinstance(uid, web.Response):
            return uid
        index_text = request.match_info["index"]
        if not index_text.isdigit() or int(index_text) > 10**7:
            return _error(400, "invalid_payload", "index must be an integer 0 ... 10000000")
        index = int(index_text)
        key = request.headers.get("Idempotency-Key", "")
        if not key or len(key) > 200:
            return _error(400, "invalid_payload", "an Idempotency-Key header is required")
        chunk = await payload(request, Chunk)
        if isinstance(chunk, web.Response):
            return chunk
        run = store.run(uid)
        if run is None:
            return _error(404, "not_found", "no such run")
        if chunk.index != index or index >= run.chunks:
            return _error(
                400,
                "invalid_payload",
                f"chunk index {chunk.index} (path {index}, run {run.chunks})",
            )
        problems = check_chunk(chunk, run)
        if problems:
            return _error(400, "invalid_payload", "; ".join(problems))
        existing = store.chunk(uid, index)
        if existing is not None:
            if existing == chunk and store.chunk_key(uid, index) == key:
                return web.json_response(_dump(store.state(uid)), status=200)
            return _error(409, "conflict", f"chunk {index} was received with other content")
        if store.completed(uid):
            return _error(409, "conflict", "the run is complete")
        folder = store.run_dir(uid) / "chunks"
        _write(folder / f"{index}.key", key)
        _write(folder / f"{index}.json", _json(chunk))
        return web.json_response(_dump(store.state(uid)), status=201)

    async def complete(request: web.Request) -> web.Response:
        uid = uid_of(request)
        if isinstance(uid, web.Response):
            return uid
        done = await payload(request, Complete)
        if isinstance(done, web.Response):
            return done
        run = store.run(uid)
        if run is None:
            return _error(404, "not_found", "no such run")
        if done.chunks != run.chunks or done.samples != run.samples:
            return _error(400, "invalid_payload", "chunks/samples differ from the created run")
        have = set(store.chunk_indices(uid))
        missing = [i for i in range(run.chunks) if i not in have]
        if missing:
            return _error(
                409,
                "conflict",
                f"{len(missing)} chunks not received",
                missing_chunks=missing[:1000],
            )
        if not store.completed(uid):
            _write(store.run_dir(uid) / "complete.json", _json(done))
        return web.json_response(_dump(store.state(uid)))

    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app.router.add_put("/v1/runs/{uid}", put_run)
    app.router.add_get("/v1/runs/{uid}", get_run)
    app.router.add_post("/v1/runs/{uid}/heartbeats", heartbeat)
    app.router.add_put("/v1/runs/{uid}/chunks/{index}", put_chunk)
    app.router.add_post("/v1/runs/{uid}/complete", complete)
    return app


def _json(model: Any) -> str:
    return str(model.model_dump_json(by_alias=True, exclude_none=True))


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


class ReceiverThread:
    """The receiver on 127.0.0.1 in a background thread (``port=0``: a free port)."""

    def __init__(
        self,
        store: Path,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
    ) -> None:
        self.store = Store(store)
        self.faults = faults or Faults()
        self._app = make_app(store, token, self.faults)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        # stop() must not wait a minute for a client still streaming a refused body
        self._runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> ReceiverThread:
        self._thread.start()

        async def up() -> int:
            await self._runner.setup()
            site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
            await site.start()
            server = site._server  # the bound socket tells the port chosen for port 0
            assert server is not None
            sockets = getattr(server, "sockets", None) or []
            return int(sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._down(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _down(self) -> None:
        await self._runner.cleanup()
        # handlers still reading a refused body outlive the shutdown timeout: end them
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def __enter__(self) -> ReceiverThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(store: Path, token: str, host: str, port: int) -> None:
    """Run the receiver in the foreground until interrupted (``sift-worker receiver``)."""
    web.run_app(make_app(store, token), host=host, port=port, access_log=None, print=None)


__all__ = ["Fault", "Faults", "ReceiverThread", "Store", "make_app", "serve"]
