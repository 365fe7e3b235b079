"""Prometheus metrics of the operator, on a registry of its own.

Label sets are bounded: phases and outcomes are fixed lists; no series per run (a
label per run name would grow forever as runs come and go).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed")
OUTCOMES = ("succeeded", "failed")
# the Reported condition's reasons (conditions.py); "None" for runs without the condition yet
REPORT_REASONS = ("Reported", "Pending", "Retrying", "Rejected", "Disabled", "RunFailed", "None")

REGISTRY = CollectorRegistry(auto_describe=True)

RUNS = Gauge(
    "sift_operator_runs",
    "SelectionRuns the operator watches, by phase.",
    ["phase"],
    registry=REGISTRY,
)
RUNS_REPORTING = Gauge(
    "sift_operator_runs_reporting",
    "SelectionRuns the operator watches, by the reason of their Reported condition.",
    ["reason"],
    registry=REGISTRY,
)
RUN_OUTCOMES = Counter(
    "sift_operator_run_outcomes",
    "Runs that finished, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "sift_operator_reconcile_duration_seconds",
    "Time to reconcile one SelectionRun.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "sift_operator_reconcile_errors",
    "Reconciles that raised (retried by kopf).",
    registry=REGISTRY,
)
_LONG = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
QUEUE_WAIT = Histogram(
    "sift_operator_queue_wait_seconds",
    "Time from a run's creation until its worker pod runs.",
    buckets=_LONG,
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "sift_operator_run_duration_seconds",
    "Time from a run's start to its completion.",
    buckets=_LONG,
    registry=REGISTRY,
)

for _phase in PHASES:
    RUNS.labels(phase=_phase)
for _outcome in OUTCOMES:
    RUN_OUTCOMES.labels(outcome=_outcome)
for _reason in REPORT_REASONS:
    RUNS_REPORTING.labels(reason=_reason)


def set_phase_counts(counts: Mapping[str, int]) -> None:
    """Set the gauge for every phase (missing ones to 0, so no series goes stale)."""
    for phase in PHASES:
        RUNS.labels(phase=phase).set(counts.get(phase, 0))


def set_report_counts(counts: Mapping[str, int]) -> None:
    """The Reported gauge for every known reason; an unknown one counts as "None"."""
    known = dict.fromkeys(REPORT_REASONS, 0)
    for reason, count in counts.items():
        known[reason if reason in known else "None"] += count
    for reason, count in known.items():
        RUNS_REPORTING.labels(reason=reason).set(count)


def record_outcome(succeeded: bool) -> None:
    RUN_OUTCOMES.labels(outcome=OUTCOMES[0] if succeeded else OUTCOMES[1]).inc()
