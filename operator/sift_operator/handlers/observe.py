"""What the operator knows about the cluster: kopf's indices plus its own recent writes.

kopf keeps three indices up to date from its watch streams (runs by ``(namespace,
name)``, Jobs by ``(namespace, run)``, Pods by ``(namespace, job)``) and fills them from a
full listing before any handler runs, so everything derived from them (admission in
particular) is restart-safe. A write's answer reaches the index a moment later, through
the watch; until then the answer itself is the newest state (an *overlay*), so a
second reconcile in between neither repeats the write nor re-posts its events.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sift_operator.children.reportjob import report_job_name
from sift_operator.names import child_name

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

OVERLAY_SECONDS = 15.0  # after this the watch must have caught up: the index is the truth


def resource_version(obj: Mapping[str, Any] | None) -> int:
    """The resourceVersion as a number (etcd revisions are); 0 when opaque or absent."""
    if obj is None:
        return 0
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def controller_of(obj: Mapping[str, Any], kind: str) -> str | None:
    """The name of ``obj``'s controller owner of ``kind``, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def _first(store: Iterable[Obj] | None) -> Obj | None:
    if store is None:
        return None
    for value in store:
        return value
    return None


def _named(store: Iterable[Obj] | None, name: str) -> Obj | None:
    for value in store or ():
        if (value.get("metadata") or {}).get("name") == name:
            return value
    return None


class Overlay:
    """Bodies returned by our own writes, until the index shows them (or they expire)."""

    def __init__(self) -> None:
        self._items: dict[Key, tuple[float, Obj]] = {}

    def put(self, key: Key, body: Obj) -> None:
        if body:
            self._items[key] = (time.monotonic() + OVERLAY_SECONDS, body)

    def drop(self, key: Key) -> None:
        self._items.pop(key, None)

    def newest(self, key: Key, cached: Obj | None) -> Obj | None:
        hit = self._items.get(key)
        if hit is None:
            return cached
        expires, body = hit
        if time.monotonic() > expires or (
            cached is not None and resource_version(cached) >= resource_version(body)
        ):
            del self._items[key]
            return cached
        if cached is not None and resource_version(body) == 0:
            return cached
        return body

    def echoes(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Is ``body`` the watch's echo of our own write (same resourceVersion)? It then
        brings nothing the reconcile that wrote it did not already know."""
        hit = self._items.get(key)
        version = resource_version(body)
        return hit is not None and version != 0 and resource_version(hit[1]) == version

    def __len__(self) -> int:
        return len(self._items)


class Views:
    """Read access to the indices, corrected by the overlays.

    ``runs``, ``jobs`` and ``pods`` are kopf ``Index`` objects (or any mapping of a key
    to an iterable of bodies, in tests).
    """

    def __init__(
        self,
        runs: Mapping[Key, Iterable[Obj]],
        jobs: Mapping[Key, Iterable[Obj]],
        pods: Mapping[Key, Iterable[Obj]],
    ) -> None:
        self.runs_index = runs
        self.jobs_index = jobs
        self.pods_index = pods
        self.run_writes = Overlay()
        self.job_writes = Overlay()
        self.report_writes = Overlay()
        self.job_runs: dict[Key, str] = {}  # (namespace, job name) -> run name

    def run(self, key: Key) -> Obj | None:
        cached = _first(self.runs_index.get(key))
        if cached is None:
            self.run_writes.drop(key)
            return None
        newest = self.run_writes.newest(key, cached)
        if newest is not cached and newest is not None:
            # our status write is newer; everything but status comes from the index
            # (a user's spec change may have arrived in between)
            merged = dict(cached)
            merged["status"] = newest.get("status")
            merged["metadata"] = cached.get("metadata")
            return merged
        return cached

    def job(self, key: Key) -> Obj | None:
        """The worker Job (a run also owns its follow-up report Job: told apart by name)."""
        cached = _named(self.jobs_index.get(key), child_name(key[1]))
        return self.job_writes.newest(key, cached)

    def report_job(self, key: Key) -> Obj | None:
        cached = _named(self.jobs_index.get(key), report_job_name(key[1]))
        return self.report_writes.newest(key, cached)

    def pods(self, namespace: str, job_name: str) -> list[Obj]:
        pods = list(self.pods_index.get((namespace, job_name)) or ())
        pods.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
        return pods

    def all_runs(self) -> list[Obj]:
        out: list[Obj] = []
        for key in list(self.runs_index.keys()):
            run = self.run(key)
            if run is not None:
                out.append(run)
        return out

    def forget(self, key: Key) -> None:
        self.run_writes.drop(key)
        self.job_writes.drop(key)
        self.report_writes.drop(key)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def job_finished(job: Mapping[str, Any] | None) -> bool:
    if job is None:
        return False
    for cond in (job.get("status") or {}).get("conditions") or ():
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return True
    return False


def job_suspended(job: Mapping[str, Any] | None) -> bool:
    return bool(job is not None and (job.get("spec") or {}).get("suspend"))
