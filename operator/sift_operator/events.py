"""Kubernetes Events for a run: one per real transition and per failure.

Pure: compares the status before and after a reconcile. A reconcile that changes
nothing emits nothing, so repeated reconciles never spam the run's event list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sift_operator import conditions as conds

EventType = Literal["Normal", "Warning"]
MAX_EVENT_MESSAGE = 1024


@dataclass(frozen=True)
class EventSpec:
    type: EventType
    reason: str
    message: str


def _changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return old is None or (old.get("status"), old.get("reason")) != (
        new.get("status"),
        new.get("reason"),
    )


def _event(type_: EventType, reason: str, message: str) -> EventSpec:
    return EventSpec(type_, conds.valid_reason(reason), conds.sanitize(message, MAX_EVENT_MESSAGE))


def _for(type_: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> EventSpec | None:
    true = new.get("status") == "True"
    reason = str(new.get("reason") or "")
    message = str(new.get("message") or "")
    was_true = old is not None and old.get("status") == "True"
    if type_ == conds.ACCEPTED:
        if reason == conds.SPEC_CHANGE_IGNORED:
            # once per ignored generation
            if (
                old is None
                or old.get("reason") != reason
                or (old.get("observedGeneration") != new.get("observedGeneration"))
            ):
                return _event("Warning", reason, message)
            return None
        if not _changed(old, new):
            return None
        if true:
            return None if was_true else _event("Normal", "Accepted", message)
        return _event("Warning", reason, message)
    if type_ == conds.REPORTED:
        return _reported(old, new)
    if not _changed(old, new):
        return None
    if type_ == conds.QUEUED:
        if true:
            return _event("Normal", reason, message)
        if was_true and reason == conds.ADMITTED:
            return _event("Normal", conds.ADMITTED, message)
        return None
    if type_ == conds.RUNNING:
        if true:
            return _event("Normal", "Started", message)
        if reason == conds.JOB_CREATED:
            return _event("Normal", reason, "created the worker Job; " + message)
        if reason in (conds.NOT_STARTED, conds.FINISHED):
            return None
        return _event("Warning", reason, message)
    if type_ == conds.SUCCEEDED:
        return _event("Normal", conds.SUCCEEDED, message) if true else None
    if type_ == conds.FAILED:
        return _event("Warning", reason, message) if true else None
    if type_ == conds.EGRESS_RESTRICTED:
        if true:
            return _event("Normal", conds.EGRESS_RESTRICTED, f"{reason}: {message}")
        return _event("Warning", reason, message)
    return None


def _reported(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> EventSpec | None:
    """Reported, Rejected and Retrying once each; Pending only when the retries gave up
    (its message changes); nothing while the run works or when reporting is disabled."""
    reason = str(new.get("reason") or "")
    message = str(new.get("message") or "")
    if reason == conds.REPORT_PENDING:
        if old is not None and old.get("message") != message:
            return _event("Warning", "ReportPending", message)
        return None
    if not _changed(old, new) or reason in (conds.REPORT_DISABLED, conds.RUN_FAILED):
        return None
    if new.get("status") == "True":
        return _event("Normal", conds.REPORTED, message)
    return _event("Warning", "Report" + reason, message)


def transition_events(
    old_status: Mapping[str, Any] | None, new_status: Mapping[str, Any]
) -> list[EventSpec]:
    """Events for every condition that changed from ``old_status`` to ``new_status``."""
    before = conds.by_type((old_status or {}).get("conditions"))
    after = conds.by_type(new_status.get("conditions"))
    events = []
    for type_ in conds.ORDER:
        new = after.get(type_)
        if new is None:
            continue
        event = _for(type_, before.get(type_), new)
        if event is not None:
            events.append(event)
    return events


# Normal events that only say where a new run stands; merged into the event of the same
# reconcile that says more (one API write instead of up to three for a new run).
_ABSORBED = frozenset({"Accepted", conds.EGRESS_RESTRICTED})


def merged(events: list[EventSpec]) -> list[EventSpec]:
    """The Normal events of one reconcile as one Event; Warnings stay on their own.

    The merged event keeps the reason of the most telling Normal event (``JobCreated``
    rather than ``Accepted``) and carries every message, reason-prefixed.
    """
    normal = [e for e in events if e.type == "Normal"]
    if len(normal) < 2:
        return events
    lead = next((e for e in normal if e.reason not in _ABSORBED), normal[0])
    parts = [lead.message] + [f"{e.reason}: {e.message}" for e in normal if e is not lead]
    one = _event("Normal", lead.reason, "; ".join(parts))
    out: list[EventSpec] = []
    for e in events:
        if e.type != "Normal":
            out.append(e)
        elif e is normal[0]:
            out.append(one)
    return out
