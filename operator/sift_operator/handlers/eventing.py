"""Kubernetes Events on a SelectionRun, aggregated like the kubelet's.

The same (run, type, reason, message) is one Event object whose ``count`` and
``lastTimestamp`` grow, named deterministically, so a restarted operator or a flapping
condition adds to it instead of flooding the namespace. Posting never fails a
reconcile: an Event that cannot be written is logged and dropped.

Events yield to reconciles: while runs wait in the work queue, an Event waits too (at
most ``max_delay``), so a burst of new runs gets its Jobs before the API server and the
operator spend a request per run on Events, which are informational (the status says
the same, and is written first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sift_operator.conditions import sanitize, timestamp, valid_reason
from sift_operator.kube import ApiError, Kube

log = logging.getLogger("sift.operator")

COMPONENT = "sift-operator"
MAX_REMEMBERED = 4096


def event_name(run_name: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{run_name[:200]}.{digest}"


MAX_DELAY = 5.0  # seconds an Event waits at most for the work queue to empty


class EventRecorder:
    def __init__(
        self,
        kube: Kube,
        *,
        instance: str | None = None,
        idle: asyncio.Event | None = None,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.kube = kube
        self._idle = idle  # set while no reconcile waits (the work queue's)
        self.max_delay = max_delay
        # which replica acted: the pod's name (downward API) or the host name
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        self._counts: OrderedDict[str, int] = OrderedDict()  # event name -> count (bounded)
        self.posted = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(16)

    def post_soon(
        self, run: Mapping[str, Any], events: Sequence[tuple[str, str, str]], now: datetime
    ) -> None:
        """Post ``(type, reason, message)`` events in the background, in order."""
        if not events:
            return
        task = asyncio.create_task(self._post_all(dict(run), list(events), now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_all(
        self, run: Mapping[str, Any], events: list[tuple[str, str, str]], now: datetime
    ) -> None:
        if self._idle is not None and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.max_delay)
        async with self._limit:
            for type_, reason, message in events:
                await self.post(run, type_, reason, message, now)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (a while) for events still being posted."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def _remember(self, name: str, count: int) -> None:
        self._counts[name] = count
        self._counts.move_to_end(name)
        while len(self._counts) > MAX_REMEMBERED:
            self._counts.popitem(last=False)

    async def post(
        self, run: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime
    ) -> None:
        meta = run.get("metadata") or {}
        namespace, run_name, uid = meta.get("namespace"), meta.get("name"), meta.get("uid")
        if not (namespace and run_name and uid):
            return
        reason = valid_reason(reason)
        message = sanitize(message)
        name = event_name(str(run_name), f"{uid}\0{type_}\0{reason}\0{message}")
        stamp = timestamp(now)
        try:
            count = self._counts.get(name)
            if count is not None:
                await self._bump(str(namespace), name, count + 1, stamp)
                return
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": run.get("apiVersion", "sift.dev/v1alpha1"),
                    "kind": run.get("kind", "SelectionRun"),
                    "name": run_name,
                    "namespace": namespace,
                    "uid": uid,
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.instance,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
            try:
                await self.kube.create(body)
                self._remember(name, 1)
            except ApiError as exc:
                if not exc.already_exists:
                    raise
                existing = await self.kube.get("v1", "Event", str(namespace), name)
                await self._bump(
                    str(namespace), name, int((existing or {}).get("count", 1)) + 1, stamp
                )
            self.posted += 1
        except (ApiError, OSError) as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, run_name, exc)

    async def _bump(self, namespace: str, name: str, count: int, stamp: str) -> None:
        ref = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"namespace": namespace, "name": name},
        }
        try:
            await self.kube.merge_patch(ref, {"count": count, "lastTimestamp": stamp})
        except ApiError as exc:
            if not exc.not_found:
                raise
            self._counts.pop(name, None)
            return
        self._remember(name, count)
        self.posted += 1
