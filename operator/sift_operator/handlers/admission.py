"""The operator-wide limit of running runs (``settings.max_running_runs``).

A run *holds a slot* while its Job exists, is not suspended and has not finished.
Runs that Kueue admits (``spec.worker.queueName``) and runs the user suspended take no
part: Kueue and the user are in charge of those. The rest wait, in creation order
(``creationTimestamp``, then name), with their Job created suspended; a reconcile
un-suspends a Job when its run is among the first ``limit - held`` waiting runs.

Everything is derived from the objects in the API (through kopf's indices), so a
restarted operator makes the same decisions; the only memory is the set of decisions
made but not yet seen back through the watch, and the runs a problem holds back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from sift_operator.handlers.observe import Key, Obj, Views, job_finished, job_suspended, key_of

TERMINAL_PHASES = ("Succeeded", "Failed")


def creation_order(run: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = run.get("metadata") or {}
    return (
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
    )


def kueue_managed(run: Mapping[str, Any]) -> bool:
    return bool(((run.get("spec") or {}).get("worker") or {}).get("queueName"))


def user_suspended(run: Mapping[str, Any]) -> bool:
    return bool((run.get("spec") or {}).get("suspend"))


def terminal(run: Mapping[str, Any]) -> bool:
    return (run.get("status") or {}).get("phase") in TERMINAL_PHASES


def holds_slot(run: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    return (
        job is not None
        and not kueue_managed(run)
        and not job_suspended(job)
        and not job_finished(job)
    )


def wants_slot(run: Mapping[str, Any], job: Mapping[str, Any] | None) -> bool:
    """Waiting for the operator's admission (not yet holding a slot)."""
    meta = run.get("metadata") or {}
    return (
        not kueue_managed(run)
        and not user_suspended(run)
        and not terminal(run)
        and not meta.get("deletionTimestamp")
        and (job is None or (job_suspended(job) and not job_finished(job)))
    )


def admitted(
    runs: Iterable[tuple[Obj, Obj | None]],
    limit: int,
    *,
    extra_held: Iterable[Key] = (),
    blocked: Iterable[Key] = (),
) -> set[Key]:
    """The waiting runs that may start now: the first ``limit - held`` in creation order.

    ``runs`` pairs each run with its Job (or None). ``extra_held`` are runs admitted but
    not yet seen as running; ``blocked`` are runs a problem holds back (they keep no
    place in the line).
    """
    held: set[Key] = set()
    waiting: list[Obj] = []
    blocked_set = set(blocked)
    for run, job in runs:
        key = key_of(run)
        if holds_slot(run, job):
            held.add(key)
        elif wants_slot(run, job) and key not in blocked_set:
            waiting.append(run)
    held |= set(extra_held)
    waiting = [r for r in waiting if key_of(r) not in held]
    free = max(0, limit - len(held))
    waiting.sort(key=creation_order)
    return {key_of(r) for r in waiting[:free]}


class Admission:
    """Serialises admission decisions and remembers the ones not yet observed."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.lock = asyncio.Lock()
        self.pending: set[Key] = set()  # admitted, the watch has not shown it running yet
        self.blocked: set[Key] = set()

    @property
    def enabled(self) -> bool:
        return self.limit is not None

    def _pairs(self, views: Views) -> list[tuple[Obj, Obj | None]]:
        return [(run, views.job(key_of(run))) for run in views.all_runs()]

    def refresh(self, views: Views) -> None:
        """Forget pending decisions the index now shows (running, finished or gone)."""
        for key in list(self.pending):
            run, job = views.run(key), views.job(key)
            seen_running = job is not None and not job_suspended(job)
            if run is None or seen_running or job_finished(job):
                self.pending.discard(key)

    def may_run(self, key: Key, views: Views) -> bool:
        """Call with ``lock`` held; True admits ``key`` (the caller then starts it)."""
        if self.limit is None:
            return True
        if key in self.pending:
            return True
        self.refresh(views)
        pairs = self._pairs(views)
        ok = key in admitted(pairs, self.limit, extra_held=self.pending, blocked=self.blocked)
        if ok:
            self.pending.add(key)
        return ok

    def next_waiting(self, views: Views) -> list[Key]:
        """Waiting runs that could be admitted now (to enqueue when a slot frees)."""
        if self.limit is None:
            return []
        self.refresh(views)
        return sorted(
            admitted(self._pairs(views), self.limit, extra_held=self.pending, blocked=self.blocked)
        )

    def forget(self, key: Key) -> None:
        self.pending.discard(key)
        self.blocked.discard(key)
