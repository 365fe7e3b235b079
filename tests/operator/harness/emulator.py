"""A KMock Kubernetes emulator with the server-side behaviour the operator relies on.

KMock 0.8 stores objects and serves CRUD, watch streams and patches, but (see
../shared/notes/TEST-INFRA.md) sets no ``uid``/``resourceVersion``/``creationTimestamp``/
``generation``, does not isolate ``status`` from the main resource, has no garbage
collection and keeps every version of every object and every request in memory. This
subclass fills those gaps the way the real API server behaves:

* create: ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation: 1``, the
  namespace from the URL, ``generateName``; ``status`` dropped where it is a subresource;
  409 ``AlreadyExists`` for a live name.
* patch (merge or JSON patch): ``/status`` changes only ``status``, the main resource
  never does; ``generation`` bumps on changes outside ``metadata``/``status``;
  ``resourceVersion`` on every real change; a no-op patch changes nothing and sends no
  watch event.
* delete: finalizers honoured (``deletionTimestamp``); owners' dependents deleted
  (background cascade by ``ownerReferences`` uid).
* watch: existing objects and later changes with no gap between them.
* bounded memory: one version per object, deleted objects forgotten, request log trimmed.

Tests may inject failures (``fail_creates``) and read counters (``counts``,
``created_at``) from another thread: plain dict reads and writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import aiohttp.web
import attrs
import kmock
from kmock._internal import aiobus, apps, dicts, enums, rendering  # no public equivalent

VERBS = {"get", "list", "watch", "create", "patch", "delete"}

# plural key -> (kind, singular, subresources, namespaced)
RESOURCES: dict[str, tuple[str, str, set[str], bool]] = {
    "sift.dev/v1alpha1/selectionruns": ("SelectionRun", "selectionrun", {"status"}, True),
    "batch/v1/jobs": ("Job", "job", {"status"}, True),
    "v1/pods": ("Pod", "pod", {"status"}, True),
    "v1/configmaps": ("ConfigMap", "configmap", set(), True),
    "v1/serviceaccounts": ("ServiceAccount", "serviceaccount", set(), True),
    "v1/secrets": ("Secret", "secret", set(), True),
    "v1/events": ("Event", "event", set(), True),
    "v1/namespaces": ("Namespace", "namespace", {"status"}, False),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", "networkpolicy", set(), True),
    "cilium.io/v2/ciliumnetworkpolicies": (
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicy",
        set(),
        True,
    ),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", "kopfpeering", set(), True),
    "kopf.dev/v1/clusterkopfpeerings": ("ClusterKopfPeering", "clusterkopfpeering", set(), False),
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plural(request: rendering.Request) -> str:
    res = request.resource
    return str(res.plural) if res is not None else ""


@attrs.define(kw_only=True)
class SiftEmulator(kmock.KubernetesEmulator):
    """The KMock emulator plus the API-server behaviour listed in the module docstring."""

    counts: Counter[tuple[str, str]] = attrs.field(factory=Counter, init=False)
    created_at: dict[tuple[str, str, str], float] = attrs.field(factory=dict, init=False)
    fail_creates: dict[str, Callable[[dict[str, Any]], kmock.KubernetesError | None]] = attrs.field(
        factory=dict, init=False
    )
    keep_requests: int = 2000
    creation_time: str | None = None  # a fixed creationTimestamp (tests of ordering ties)
    _rv: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _with_status: set[str] = attrs.field(factory=set, init=False)
    _tombstones: list[Any] = attrs.field(factory=list, init=False)
    _uids: dict[str, Any] = attrs.field(factory=dict, init=False)  # live objects by uid
    orphans_collected: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, singular, subresources, namespaced) in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                singular=singular,
                namespaced=namespaced,
                subresources=subresources,
                verbs=VERBS,
            )
            if "status" in subresources:
                self._with_status.add(key.rsplit("/", 1)[-1])

    # --- helpers usable from the emulator's loop ---

    def live(self, plural_key: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(plural_key), namespace, name)
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _next_rv(self) -> str:
        return str(next(self._rv))

    async def _emit(self, resource: Any, etype: str, raw: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": etype, "object": raw})

    # --- request handling ---

    async def _handle(self, request: rendering.Request) -> Any:
        self.counts[(str(request.method.value if request.method else ""), _plural(request))] += 1
        if len(self._requests) > self.keep_requests:
            del self._requests[: len(self._requests) - self.keep_requests // 2]
        if request.resource is not None and request.action in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            async with self._lock:
                self._forget_tombstones()
                if request.action == enums.action.CREATE:
                    await self._create(request)
                elif request.action == enums.action.UPDATE and request.name is not None:
                    await self._update(request)
                elif request.action == enums.action.DELETE and request.name is not None:
                    await self._delete(request.resource, request.namespace, request.name)
        # KMock routes every request through its DSL of reactions: ~50 ms per request with
        # the emulator's dozen fallbacks. Object requests are served here directly; only
        # discovery (rare) goes through the DSL.
        action = request.action
        is_object_api = request.resource is not None and request.resource.plural is not None
        if is_object_api and action in self._SERVE:
            payload = await getattr(self, self._SERVE[action])(request)
            return aiohttp.web.json_response(payload)
        if is_object_api and action == enums.action.WATCH:
            return await self._stream(request)
        return await apps.RawHandler._handle(self, request)

    _SERVE: ClassVar[dict[Any, str]] = {
        enums.action.LIST: "_serve_list",
        enums.action.FETCH: "_serve_fetch",
        enums.action.CREATE: "_serve_create",
        enums.action.UPDATE: "_serve_update",
        enums.action.DELETE: "_serve_delete",
    }

    async def _stream(self, request: rendering.Request) -> Any:
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        try:
            async for event in self._serve_watch(request):
                if isinstance(event, bytes):
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        return response

    def _forget_tombstones(self) -> None:
        # Deleted objects stay one request long (the DELETE reply shows the last state).
        for key in self._tombstones:
            if key in self.objects and self.objects[key].deleted:
                del self.objects[key]
        self._tombstones.clear()

    async def _create(self, request: rendering.Request) -> None:
        plural = _plural(request)
        if request.resource not in self.resources:  # e.g. a CRD that is not installed
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the resource"
            )
        data = request.data
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="no object")
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid", message="name is required")
        namespace = request.namespace or meta.get("namespace")
        if namespace is not None:
            meta["namespace"] = namespace
        hook = self.fail_creates.get(plural)
        if hook is not None:
            error = hook(data)
            if error is not None:
                raise error
        key = (request.resource, namespace, meta["name"])
        if key in self.objects and not self.objects[key].deleted:
            raise kmock.KubernetesError(
                status=409,
                reason="AlreadyExists",
                message=f'{plural} "{meta["name"]}" already exists',
            )
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=self.creation_time or now_rfc3339(),
            generation=1,
        )
        if plural in self._with_status:
            data.pop("status", None)
        # Stored objects are never changed in place (a change stores a new dict), so the
        # parsed request body can be stored and streamed as it is: no copies.
        self.objects[key] = data
        self._uids[meta["uid"]] = key
        self.created_at[(plural, namespace or "", meta["name"])] = time.monotonic()
        await self._emit(request.resource, "ADDED", data)
        # the garbage collector removes a dependent whose owner is already gone
        owners = [ref.get("uid") for ref in meta.get("ownerReferences") or ()]
        if owners and all(uid not in self._uids for uid in owners):
            self.orphans_collected += 1
            await self._delete(request.resource, namespace, meta["name"])

    async def _update(self, request: rendering.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        obj = self.objects[key]
        old = obj.raw
        patch = request.data if request.data is not None else {}
        try:  # copy-on-write (merge) or a deep copy (JSON patch): ``old`` stays as it was
            patched = dict(dicts.patch_dict(old, patch))
        except Exception as exc:  # a bad JSON patch: the API server answers 422
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        plural = _plural(request)
        if request.subresource == "status":
            new = dict(old)
            if "status" in patched:
                new["status"] = patched["status"]
            else:
                new.pop("status", None)
        else:
            new = patched
            if plural in self._with_status:  # status changes only through /status
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        new_meta = new["metadata"] = dict(new.get("metadata") or {})
        for fixed in ("uid", "name", "namespace", "creationTimestamp", "resourceVersion"):
            if fixed in old.get("metadata", {}):
                new_meta[fixed] = old["metadata"][fixed]
        if new == old:
            return  # a no-op patch: no new version, no watch event
        body_old = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        body_new = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        if body_old != body_new:
            new_meta["generation"] = int(old.get("metadata", {}).get("generation", 1)) + 1
        new_meta["resourceVersion"] = self._next_rv()
        obj.history[:] = [new]
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            await self._delete(request.resource, request.namespace, str(request.name))
        else:
            await self._emit(request.resource, "MODIFIED", new)

    async def _delete(self, resource: Any, namespace: str | None, name: str) -> None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        obj = self.objects[key]
        raw = obj.raw  # a shallow copy: only metadata changes, and it is copied too
        meta = raw["metadata"] = dict(raw.get("metadata") or {})
        if meta.get("finalizers") and not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = now_rfc3339()
            meta["resourceVersion"] = self._next_rv()
            obj.history[:] = [raw]
            await self._emit(resource, "MODIFIED", raw)
            return
        if meta.get("finalizers"):
            return  # already being deleted, waiting for its finalizers
        meta["resourceVersion"] = self._next_rv()
        obj.history[:] = [raw]
        obj.delete()
        self._uids.pop(str(meta.get("uid", "")), None)
        self._tombstones.append(key)
        await self._emit(resource, "DELETED", raw)
        await self._collect_dependents(str(meta.get("uid", "")), namespace)

    async def _collect_dependents(self, owner_uid: str, namespace: str | None) -> None:
        """Background cascading deletion, as the garbage collector does."""
        if not owner_uid:
            return
        dependents = [
            (res, ns, nm)
            for (res, ns, nm), obj in list(self.objects.items())
            if not obj.deleted
            and ns == namespace
            and any(
                ref.get("uid") == owner_uid
                for ref in obj.raw.get("metadata", {}).get("ownerReferences", [])
            )
        ]
        for res, ns, nm in dependents:
            if (res, ns, nm) in self.objects and not self.objects[(res, ns, nm)].deleted:
                await self._delete(res, ns, nm)

    # KMock finds an object by scanning all objects; with thousands of them every request
    # pays for it. These look it up by key.

    def _stored(self, request: rendering.Request, name: str | None = None) -> Any:
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.get("metadata") or {}
        namespace = request.namespace or meta.get("namespace")
        key = (request.resource, namespace, name or request.name or meta.get("name"))
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 (no .get)

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request)
            if obj is None or obj.deleted:
                raise kmock.KubernetesObjectNotFoundError()
            return obj.raw

    async def _serve_create(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request)
            assert obj is not None
            return obj.last.raw

    async def _serve_update(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request)
            assert obj is not None
            return obj.last.raw

    async def _serve_delete(self, request: rendering.Request) -> Any:
        async with self._lock:
            obj = self._stored(request)
            assert obj is not None
            return obj.last.raw

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """Existing objects, then changes; the bus is marked before the snapshot (no gap)."""
        yield b""
        assert request.resource is not None
        bus: aiobus.Bus[Any] = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            events = [
                {"type": "ADDED", "object": obj.raw}
                for (res, ns, nm), obj in self.objects.items()
                if not obj.deleted and self._matches(request, res, ns, nm)
            ]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=mark):
                meta = event.get("object", {}).get("metadata", {})
                if self._matches(
                    request, request.resource, meta.get("namespace"), meta.get("name")
                ):
                    yield event
        finally:
            await bus.unmark(mark)

    @staticmethod
    def _matches(request: rendering.Request, res: Any, ns: str | None, name: str | None) -> bool:
        return bool(
            res == request.resource
            and (request.namespace is None or ns == request.namespace)
            and (request.name is None or name == request.name)
        )
