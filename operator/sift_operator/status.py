"""The run's status from what is observed: a pure function, so it can be tested and trusted.

``desired_status`` is level-based: it reads the owned Job, its pods and what the
handler found (problems, the concurrency queue, progress), and returns the complete
``.status``. Conditions are the contract; ``phase`` summarises them for printer columns.
A finished run stays finished even after its Job is garbage-collected (TTL).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sift_worker.api.v1alpha1 import Progress, RunResult, SelectionRunStatus

from sift_operator import conditions as conds
from sift_operator.children.common import KUEUE_QUEUE_LABEL, InvalidRunError, parse_spec
from sift_operator.children.networkpolicy import storage_endpoints

MAX_CONDITIONS = 16
IMAGE_PULL_WAITING = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_JOB_FAILURE_REASONS = {
    "BackoffLimitExceeded": conds.BACKOFF_LIMIT_EXCEEDED,
    "DeadlineExceeded": conds.DEADLINE_EXCEEDED,
    # the only FailJob rule of the pod failure policy is the worker's config-error exit code
    "PodFailurePolicy": conds.CONFIG_ERROR,
}
_FAILURE_MESSAGES = {
    conds.BACKOFF_LIMIT_EXCEEDED: "the worker pod failed more often than backoffLimit allows",
    conds.DEADLINE_EXCEEDED: "the run took longer than activeDeadlineSeconds",
    conds.CONFIG_ERROR: "the worker refused the spec (config error exit code); see its log",
    conds.JOB_FAILED: "the worker Job failed",
}


@dataclass(frozen=True)
class Problem:
    """Something that holds the run back, found by the handler or in the pods."""

    reason: str  # CamelCase, part of the API (docs/operator.md)
    message: str  # never a secret, token or signed URL (scrubbed again anyway)


@dataclass(frozen=True)
class StorageEgress:
    """How the NetworkPolicy lets the worker reach its storage (found when the Job is made).

    ``mode``: ``Pinned`` (spec.egress.storageCIDRs), ``Default`` (the operator's
    ``storage_cidrs`` setting), ``Resolved`` (the hosts' addresses at reconcile time) or
    ``None`` (the run uses no bucket).
    """

    mode: str
    hosts: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()


@dataclass(frozen=True)
class Observed:
    generation: int
    job: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    waiting_for_slot: bool = False
    problems: Sequence[Problem] = ()
    egress: str = conds.EGRESS_NETWORK_POLICY
    progress: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    spec_change_ignored: bool = False
    report_job: Mapping[str, Any] | None = None  # the follow-up report Job, if any
    report_pods: Sequence[Mapping[str, Any]] = ()
    report_retry_seconds: int = 3600  # settings.report_retry_seconds
    storage: StorageEgress | None = None  # None: not looked at in this reconcile


# --- reading Jobs and Pods ---


def _job_conditions(job: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return conds.by_type((job.get("status") or {}).get("conditions"))


def _true(conds: Mapping[str, Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    cond = conds.get(type_)
    return cond if cond is not None and cond.get("status") == "True" else None


@dataclass(frozen=True)
class _Outcome:
    succeeded: bool
    reason: str
    message: str
    time: str | None
    kept: bool = False  # taken from the run's status: the message is already complete


def job_outcome(job: Mapping[str, Any] | None) -> _Outcome | None:
    """The Job's final outcome, once the Job controller has decided it."""
    if job is None:
        return None
    found = _job_conditions(job)
    done = _true(found, "Complete") or _true(found, "SuccessCriteriaMet")
    if done is not None:
        when = (job.get("status") or {}).get("completionTime") or done.get("lastTransitionTime")
        return _Outcome(True, conds.JOB_COMPLETE, "the worker finished", when)
    failed = _true(found, "Failed") or _true(found, "FailureTarget")
    if failed is not None:
        reason = _JOB_FAILURE_REASONS.get(str(failed.get("reason")), conds.JOB_FAILED)
        detail = conds.sanitize(str(failed.get("message") or ""), 400)
        message = _FAILURE_MESSAGES[reason] + (f": {detail}" if detail else "")
        return _Outcome(False, reason, message, failed.get("lastTransitionTime"))
    return None


def job_suspended(job: Mapping[str, Any]) -> bool:
    if (job.get("spec") or {}).get("suspend"):
        return True
    return _true(_job_conditions(job), "Suspended") is not None


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _running_since(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    times = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Running":
            continue
        for cs in status.get("containerStatuses") or ():
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
            if started:
                times.append(str(started))
        if status.get("startTime"):
            times.append(str(status["startTime"]))
    return sorted(times)


def pod_problems(pods: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Why the Job's pods are not starting: unschedulable, image pull, container config."""
    found: list[Problem] = []
    for pod in pods:
        if _finished(pod):
            continue
        status = pod.get("status") or {}
        name = (pod.get("metadata") or {}).get("name", "the worker pod")
        for cond in status.get("conditions") or ():
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                detail = cond.get("message") or "no node fits"
                found.append(
                    Problem(conds.UNSCHEDULABLE, f"pod {name} cannot be scheduled: {detail}")
                )
        statuses = [
            *(status.get("initContainerStatuses") or ()),
            *(status.get("containerStatuses") or ()),
        ]
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why = str(waiting.get("reason") or "")
            detail = str(waiting.get("message") or why)
            if why in IMAGE_PULL_WAITING:
                image = cs.get("image") or ""
                found.append(
                    Problem(
                        conds.IMAGE_PULL_FAILED, f"pod {name}: cannot pull image {image}: {detail}"
                    )
                )
            elif why in CONFIG_WAITING:
                found.append(Problem(conds.CONTAINER_CONFIG_ERROR, f"pod {name}: {detail}"))
    return found


# --- reporting: the worker's termination message ---

REPORT_STATES = frozenset({"Reported", "Pending", "Rejected"})
WORKER_CONTAINER = "worker"


@dataclass(frozen=True)
class ReportState:
    """What a worker (or report) pod said about the report when it ended."""

    reported: str  # Reported | Pending | Rejected
    reason: str
    chunks: int
    acked: int
    finished: str = ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_report_message(message: Any) -> ReportState | None:
    """The worker's ``{"reported", "reason", "chunks", "acked"}``, or None if it is not one."""
    if not isinstance(message, str) or not message.strip().startswith("{"):
        return None
    try:
        doc = json.loads(message)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("reported") not in REPORT_STATES:
        return None
    return ReportState(
        str(doc["reported"]),
        conds.sanitize(str(doc.get("reason") or ""), 400),
        _int(doc.get("chunks")),
        _int(doc.get("acked")),
    )


def report_state(pods: Sequence[Mapping[str, Any]]) -> ReportState | None:
    """The newest report state among the pods' terminated worker containers.

    ``finishedAt`` has whole seconds: a report pod can end in the second its worker pod
    ended, so on a tie the pod later in ``pods`` (the worker's first, then the report
    Job's) wins.
    """
    found: list[ReportState] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or ():
            if cs.get("name") != WORKER_CONTAINER:
                continue
            term = (cs.get("state") or {}).get("terminated") or {}
            state = parse_report_message(term.get("message"))
            if state is not None:
                finished = str(term.get("finishedAt") or "")
                found.append(ReportState(**{**state.__dict__, "finished": finished}))
    if not found:
        return None
    return max(reversed(found), key=lambda s: s.finished)  # max keeps the first of equals


def _stamp(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def reported_condition(
    *,
    enabled: bool,
    outcome_succeeded: bool | None,
    state: ReportState | None,
    report_job_failed: bool,
    completion_time: str | None,
    retry_seconds: int,
    old: Mapping[str, Any] | None,
    was_terminal: bool,
    now: datetime,
) -> tuple[bool, str, str]:
    """``(status, reason, message)`` of the Reported condition.

    ``state`` is the newest termination message of the run's worker or follow-up report
    pods. Pods go away (Job TTL): a run that was already over keeps what it said.
    """
    if not enabled:
        return False, conds.REPORT_DISABLED, "spec.report is not set: nothing leaves the cluster"
    if outcome_succeeded is None:
        return False, conds.REPORT_PENDING, "the results are reported once the run has finished"
    if not outcome_succeeded:
        return False, conds.RUN_FAILED, "the run failed: there are no results to report"
    started = _stamp(completion_time) or now
    deadline = started + timedelta(seconds=retry_seconds)
    expired = report_job_failed or retry_seconds <= 0 or now >= deadline
    if state is None:  # no report pod left, or a worker without reporting
        if not was_terminal or old is None:
            return (
                False,
                conds.REPORT_PENDING,
                "the worker ended without a report state in its termination message",
            )
        if old.get("reason") != conds.REPORT_RETRYING or not expired:
            return old.get("status") == "True", str(old.get("reason")), str(old.get("message"))
        state = ReportState("Pending", "", 0, 0)
    counts = f"{state.acked} of {state.chunks} chunks acknowledged"
    detail = f": {state.reason}" if state.reason else ""
    if state.reported == "Reported":
        return True, conds.REPORT_DONE, f"the results API acknowledged all {state.chunks} chunks"
    if state.reported == "Rejected":
        text = f"the results API refused the report ({counts}){detail}"
        return False, conds.REPORT_REJECTED, text
    if not expired:
        return (
            False,
            conds.REPORT_RETRYING,
            f"{counts}; a report Job retries until {conds.timestamp(deadline)}{detail}",
        )
    return (
        False,
        conds.REPORT_PENDING,
        f"gave up after the retry window of {retry_seconds} s ({counts}); the results are "
        f"safe in the output storage: send them with `sift-worker report`{detail}",
    )


# --- the status ---


def _percent(done: int, total: int | None) -> int | None:
    if not total:
        return None
    return max(0, min(100, math.floor(100 * done / total)))


def _progress(observed: Mapping[str, Any] | None, old: Any) -> dict[str, Any] | None:
    source = observed if observed is not None else old
    if not isinstance(source, Mapping) or "stage" not in source:
        return None
    done = max(0, int(source.get("done") or 0))
    total = source.get("total")
    total = max(0, int(total)) if total is not None else None
    out: dict[str, Any] = {"stage": conds.sanitize(str(source["stage"]), 63), "done": done}
    if total is not None:
        out["total"] = total
    percent = _percent(done, total)
    if percent is not None:
        out["percent"] = percent
    Progress.model_validate(out)
    return out


def _result(observed: Mapping[str, Any] | None, old: Any) -> dict[str, Any] | None:
    source = observed if observed is not None else old
    if not isinstance(source, Mapping) or "selected" not in source:
        return None
    out: dict[str, Any] = {
        k: max(0, int(source.get(k) or 0)) for k in ("selected", "total", "corrupt", "duplicates")
    }
    if source.get("artifacts"):
        out["artifacts"] = conds.sanitize(str(source["artifacts"]), 2048)
    RunResult.model_validate(out)
    return out


def _result_text(result: Mapping[str, Any] | None) -> str:
    if not result:
        return ""
    return (
        f": selected {result['selected']} of {result['total']} samples "
        f"({result['corrupt']} corrupt, {result['duplicates']} duplicates)"
    )


_EGRESS_TEXT = {
    conds.EGRESS_NETWORK_POLICY: "a NetworkPolicy limits egress to DNS, the operator, the results "
    "API and storage (enforced where the CNI enforces NetworkPolicy), plus the worker's "
    "in-process allowlist",
    conds.EGRESS_NETWORK_POLICY_AND_CILIUM: "a NetworkPolicy and a CiliumNetworkPolicy (toFQDNs) "
    "limit egress to DNS, the operator, the results API and storage, plus the worker's "
    "in-process allowlist",
}


def _unreachable_storage(run: Mapping[str, Any]) -> str:
    """A warning when a NetworkPolicy alone leaves the run's buckets unreachable."""
    try:
        spec = parse_spec(run)
    except InvalidRunError:
        return ""
    hosts = sorted({host for host, _ in storage_endpoints(spec)})
    if not hosts or spec.egress.storage_cidrs:
        return ""
    shown = ", ".join(hosts[:4]) + (", ..." if len(hosts) > 4 else "")
    return (
        f". No storage CIDRs are allowed, so the worker cannot reach {shown} where the CNI "
        "enforces NetworkPolicy: set spec.egress.storageCIDRs or use egress.mode cilium"
    )


def _shown(hosts: Sequence[str]) -> str:
    return ", ".join(hosts[:4]) + (", ..." if len(hosts) > 4 else "")


def storage_text(storage: StorageEgress) -> str:
    """What the NetworkPolicy does for the run's storage, for EgressRestricted's message."""
    if storage.mode == "Pinned":
        return ". Storage: the CIDRs pinned in spec.egress.storageCIDRs"
    if storage.mode == "Default":
        return ". Storage: the operator's default storage CIDRs (SIFT_STORAGE_CIDRS)"
    if storage.mode != "Resolved":
        return ""
    if storage.unresolved:
        return (
            f". Storage: cannot resolve {_shown(storage.unresolved)}, so the worker cannot "
            "reach it where the CNI enforces NetworkPolicy: set spec.egress.storageCIDRs "
            "or use egress.mode cilium"
        )
    return (
        f". Storage: {_shown(storage.hosts)} at the {len(storage.cidrs)} address(es) they "
        "resolved to when the Job was created; addresses that change later are not "
        "allowed: pin spec.egress.storageCIDRs or use egress.mode cilium"
    )


def is_terminal(status: Mapping[str, Any] | None) -> bool:
    """Succeeded or Failed: the run is over; its Job must never be created again."""
    return conds.is_true(status, conds.SUCCEEDED) or conds.is_true(status, conds.FAILED)


def phase_of(conditions: Sequence[Mapping[str, Any]]) -> str:
    status = {"conditions": list(conditions)}
    for type_ in (conds.FAILED, conds.SUCCEEDED, conds.RUNNING, conds.QUEUED):
        if conds.is_true(status, type_):
            return type_
    return "Pending"


def _order(c: Mapping[str, Any]) -> tuple[int, str]:
    type_ = str(c.get("type"))
    return (conds.ORDER.index(type_) if type_ in conds.ORDER else len(conds.ORDER), type_)


def desired_status(run: Mapping[str, Any], observed: Observed, now: datetime) -> dict[str, Any]:
    old: Mapping[str, Any] = run.get("status") or {}
    old_conds = conds.by_type(old.get("conditions"))
    spec = run.get("spec") or {}
    gen = observed.generation
    job = observed.job

    def cond(type_: str, status: bool, reason: str, message: str) -> dict[str, Any]:
        return conds.condition(
            type_, status, reason, message, generation=gen, now=now, old=old_conds.get(type_)
        )

    accept = [p for p in observed.problems if p.reason in conds.ACCEPT_PROBLEMS]
    blockers = [p for p in observed.problems if p.reason not in conds.ACCEPT_PROBLEMS]
    if job is not None:
        # the spec was accepted when its Job was created; a Secret deleted since then
        # holds the pod back (if it is not running yet), it does not un-accept the run
        blockers, accept = accept + blockers, []
    blockers += pod_problems(observed.pods)

    outcome = job_outcome(job)
    if is_terminal(old):
        # decided outcomes never change, even once the Job is gone (TTL) or disagrees
        was_success = conds.is_true(old, conds.SUCCEEDED)
        if outcome is None or outcome.succeeded != was_success:
            kept = old_conds[conds.SUCCEEDED if was_success else conds.FAILED]
            outcome = _Outcome(
                was_success,
                str(kept.get("reason") or conds.JOB_FAILED),
                str(kept.get("message") or ""),
                old.get("completionTime"),
                kept=True,
            )

    result = _result(observed.result, old.get("result"))
    progress = _progress(observed.progress, old.get("progress"))

    # Accepted
    if accept and outcome is None:
        accepted = cond(conds.ACCEPTED, False, accept[0].reason, accept[0].message)
    elif observed.spec_change_ignored:
        accepted = cond(
            conds.ACCEPTED,
            True,
            conds.SPEC_CHANGE_IGNORED,
            f"spec changed (generation {gen}) after the Job was created; the Job keeps "
            "running the spec it started with. Create a new SelectionRun to run the new spec",
        )
    else:
        accepted = cond(conds.ACCEPTED, True, conds.SPEC_VALID, "the spec is valid")
    is_accepted = accepted["status"] == "True"

    # Queued / Running
    queued_reason = ""
    if outcome is None and is_accepted:
        suspended = job is not None and job_suspended(job)
        labels = ((job or {}).get("metadata") or {}).get("labels") or {}
        if job is not None and suspended and KUEUE_QUEUE_LABEL in labels:
            queued_reason = conds.QUEUED_BY_KUEUE
        elif observed.waiting_for_slot and (job is None or suspended):
            queued_reason = conds.WAITING_FOR_SLOT
        elif (spec.get("suspend") and job is None) or suspended:
            queued_reason = conds.SUSPENDED
    queued_text = {
        conds.QUEUED_BY_KUEUE: f"Kueue holds the Job until LocalQueue "
        f"{(((job or {}).get('metadata') or {}).get('labels') or {}).get(KUEUE_QUEUE_LABEL, '')} "
        "admits it",
        conds.WAITING_FOR_SLOT: "waiting for a slot under the operator's limit of running runs",
        conds.SUSPENDED: "the run is suspended (spec.suspend); its Job does not start",
    }
    if queued_reason:
        queued = cond(conds.QUEUED, True, queued_reason, queued_text[queued_reason])
    elif job is not None or outcome is not None:
        queued = cond(conds.QUEUED, False, conds.ADMITTED, "the Job is admitted")
    else:
        queued = cond(conds.QUEUED, False, conds.NOT_QUEUED, "the run is not queued")

    running_since = _running_since(observed.pods)
    job_ready = int(((job or {}).get("status") or {}).get("ready") or 0)
    job_failures = int(((job or {}).get("status") or {}).get("failed") or 0)
    pods_running = bool(running_since) or job_ready > 0
    if outcome is not None:
        running = cond(conds.RUNNING, False, conds.FINISHED, "the worker has finished")
    elif not is_accepted:
        running = cond(conds.RUNNING, False, conds.NOT_STARTED, "the run is not accepted")
    elif queued_reason:
        running = cond(conds.RUNNING, False, conds.NOT_STARTED, "the run is queued")
    elif pods_running:
        running = cond(conds.RUNNING, True, conds.PODS_RUNNING, "the worker pod is running")
    elif blockers:
        running = cond(conds.RUNNING, False, blockers[0].reason, blockers[0].message)
    elif job_failures > 0:
        limit = ((job or {}).get("spec") or {}).get("backoffLimit")
        running = cond(
            conds.RUNNING,
            False,
            conds.RETRYING,
            f"the worker pod failed {job_failures} time(s); the Job starts a new one"
            + (f" (backoffLimit {limit})" if limit is not None else ""),
        )
    elif job is not None:
        running = cond(
            conds.RUNNING, False, conds.JOB_CREATED, "waiting for the worker pod to start"
        )
    else:
        running = cond(conds.RUNNING, False, conds.NOT_STARTED, "the Job is not created yet")

    # Succeeded / Failed
    if outcome is not None and outcome.succeeded:
        text = outcome.message if outcome.kept else outcome.message + _result_text(result)
        succeeded = cond(conds.SUCCEEDED, True, outcome.reason, text)
        failed = cond(conds.FAILED, False, conds.NO_FAILURE, "the run did not fail")
    elif outcome is not None:
        succeeded = cond(conds.SUCCEEDED, False, conds.RUN_FAILED, "the run failed")
        failed = cond(conds.FAILED, True, outcome.reason, outcome.message)
    else:
        succeeded = cond(conds.SUCCEEDED, False, conds.NOT_FINISHED, "the run has not finished")
        failed = cond(conds.FAILED, False, conds.NO_FAILURE, "the run has not failed")

    # EgressRestricted
    egress = conds.valid_reason(observed.egress, "NoPolicy")
    if egress in conds.EGRESS_ENFORCED:
        text = _EGRESS_TEXT[egress]
        before = old_conds.get(conds.EGRESS_RESTRICTED)
        if egress != conds.EGRESS_NETWORK_POLICY:
            pass
        elif observed.storage is not None:
            text += storage_text(observed.storage)
        elif before is not None and before.get("reason") == egress and job is not None:
            text = str(before.get("message") or text)  # what was found when the Job was made
        else:
            text += _unreachable_storage(run)
        restricted = cond(conds.EGRESS_RESTRICTED, True, egress, text)
    else:
        restricted = cond(
            conds.EGRESS_RESTRICTED,
            False,
            egress,
            "no egress policy is in place; only the worker's in-process allowlist applies",
        )

    # Reported
    report_job = observed.report_job
    report_outcome = job_outcome(report_job)
    rep_status, rep_reason, rep_text = reported_condition(
        enabled=spec.get("report") is not None,
        outcome_succeeded=None if outcome is None else outcome.succeeded,
        state=report_state([*observed.pods, *observed.report_pods]),
        report_job_failed=report_outcome is not None and not report_outcome.succeeded,
        completion_time=old.get("completionTime") or (outcome.time if outcome else None),
        retry_seconds=observed.report_retry_seconds,
        old=old_conds.get(conds.REPORTED),
        was_terminal=is_terminal(old),
        now=now,
    )
    reported = cond(conds.REPORTED, rep_status, rep_reason, rep_text)

    managed = [accepted, queued, running, succeeded, failed, restricted, reported]
    passthrough = [
        {**c, "message": conds.sanitize(str(c.get("message") or ""))}
        for t, c in old_conds.items()
        if t not in conds.MANAGED
    ]
    passthrough.sort(key=_order)
    conditions = (managed + passthrough)[:MAX_CONDITIONS]

    status: dict[str, Any] = {
        "phase": phase_of(conditions),
        "observedGeneration": gen,
        "conditions": conditions,
    }
    start = old.get("startTime")
    if start is None and (pods_running or outcome is not None):
        job_start = ((job or {}).get("status") or {}).get("startTime")
        start = (running_since[0] if running_since else None) or job_start or conds.timestamp(now)
    if start is not None:
        status["startTime"] = str(start)
    if outcome is not None:
        status["completionTime"] = str(
            old.get("completionTime") or outcome.time or conds.timestamp(now)
        )
    if progress is not None:
        status["progress"] = progress
    if result is not None:
        status["result"] = result
    SelectionRunStatus.model_validate(status)
    return status
