"""Condition types and reasons of a SelectionRun: part of the API (docs/operator.md).

Reasons are CamelCase and stable: users write alerts and scripts against them.
Messages are for people; they are scrubbed of URL query strings (where signatures
live) and bearer tokens, and bounded in length.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sift_worker.logs import redact

# --- condition types ---
ACCEPTED = "Accepted"
QUEUED = "Queued"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
EGRESS_RESTRICTED = "EgressRestricted"
REPORTED = "Reported"  # from the worker pods' termination messages (status.reported_condition)

MANAGED = (ACCEPTED, QUEUED, RUNNING, SUCCEEDED, FAILED, EGRESS_RESTRICTED, REPORTED)
ORDER = MANAGED

# --- reasons ---
SPEC_VALID = "SpecValid"
SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"

WAITING_FOR_SLOT = "WaitingForSlot"
QUEUED_BY_KUEUE = "QueuedByKueue"
SUSPENDED = "Suspended"
ADMITTED = "Admitted"
NOT_QUEUED = "NotQueued"

NOT_STARTED = "NotStarted"
JOB_CREATED = "JobCreated"
RETRYING = "Retrying"
PODS_RUNNING = "PodsRunning"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_FAILED = "ImagePullFailed"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
QUOTA_EXCEEDED = "QuotaExceeded"
FINISHED = "Finished"

JOB_COMPLETE = "JobComplete"
NOT_FINISHED = "NotFinished"
RUN_FAILED = "RunFailed"

BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
DEADLINE_EXCEEDED = "DeadlineExceeded"
CONFIG_ERROR = "ConfigError"
JOB_FAILED = "JobFailed"
NO_FAILURE = "NoFailure"

# Reported (True: "Reported"; False: the others)
REPORT_DONE = "Reported"
REPORT_PENDING = "Pending"
REPORT_RETRYING = "Retrying"
REPORT_REJECTED = "Rejected"
REPORT_DISABLED = "Disabled"

EGRESS_NETWORK_POLICY = "NetworkPolicy"
EGRESS_NETWORK_POLICY_AND_CILIUM = "NetworkPolicyAndCilium"
EGRESS_ENFORCED = (EGRESS_NETWORK_POLICY, EGRESS_NETWORK_POLICY_AND_CILIUM)

# Problems that stop the run before it is accepted (Accepted=False); every other
# problem holds it back from running (Running=False) until it is fixed.
ACCEPT_PROBLEMS = frozenset({INVALID_SPEC, SECRET_NOT_FOUND, SECRET_KEY_NOT_FOUND})

MAX_MESSAGE = 1024
_REASON_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_KEY_VALUE = re.compile(
    r"(?i)\b(authorization|token|password|passwd|secret|api[-_]?key|access[-_]?key|signature)"
    r"([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s,;\"'&]+"
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


@functools.lru_cache(maxsize=4096)  # most messages repeat across runs and reconciles
def sanitize(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message safe for status and events: no query strings, no tokens, bounded."""
    text = redact(message)
    text = _JWT.sub("<redacted-token>", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}<redacted>", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)} <redacted>", text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def valid_reason(reason: str, fallback: str = "Unknown") -> str:
    return reason if len(reason) <= 128 and _REASON_RE.match(reason) else fallback


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, whole seconds, as the API server writes them."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    now: datetime,
    old: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A metav1.Condition; ``lastTransitionTime`` is kept from ``old`` unless the
    status really changed."""
    value = "True" if status else "False"
    since = timestamp(now)
    if old is not None and old.get("status") == value and old.get("lastTransitionTime"):
        since = str(old["lastTransitionTime"])
    return {
        "type": type_,
        "status": value,
        "reason": valid_reason(reason),
        "message": sanitize(message),
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def by_type(conditions: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in conditions or () if isinstance(c, Mapping)}


def is_true(status: Mapping[str, Any] | None, type_: str) -> bool:
    cond = by_type((status or {}).get("conditions")).get(type_)
    return cond is not None and cond.get("status") == "True"
