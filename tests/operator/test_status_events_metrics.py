"""Events for transitions and failures; the operator's Prometheus metrics."""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from golden import CANARY, ROOT
from sift_operator import conditions, metrics
from sift_operator.events import EventSpec, merged, transition_events
from sift_operator.settings import OperatorSettings
from sift_operator.status import Observed, Problem, desired_status
from test_status import CASES, T0, _render, job, run

# (case: the status a first reconcile writes) -> the events it emits
FIRST_EVENTS = {
    "new": [("Normal", "Accepted"), ("Normal", "EgressRestricted")],
    "secret-missing": [("Warning", "SecretNotFound"), ("Normal", "EgressRestricted")],
    "waiting-for-slot": [
        ("Normal", "Accepted"),
        ("Normal", "WaitingForSlot"),
        ("Normal", "EgressRestricted"),
    ],
    "kueue": [("Normal", "Accepted"), ("Normal", "QueuedByKueue"), ("Normal", "EgressRestricted")],
    "job-created": [
        ("Normal", "Accepted"),
        ("Normal", "JobCreated"),
        ("Normal", "EgressRestricted"),
    ],
    "unschedulable": [
        ("Normal", "Accepted"),
        ("Warning", "Unschedulable"),
        ("Normal", "EgressRestricted"),
    ],
    "quota": [("Normal", "Accepted"), ("Warning", "QuotaExceeded"), ("Normal", "EgressRestricted")],
    "running": [("Normal", "Accepted"), ("Normal", "Started"), ("Normal", "EgressRestricted")],
    "no-egress-policy": [("Normal", "Accepted"), ("Warning", "CiliumUnavailable")],
    "spec-change-ignored": [
        ("Warning", "SpecChangeIgnored"),
        ("Normal", "Started"),
        ("Normal", "EgressRestricted"),
    ],
    "succeeded": [("Normal", "Accepted"), ("Normal", "Succeeded"), ("Normal", "EgressRestricted")],
    "backoff": [
        ("Normal", "Accepted"),
        ("Warning", "BackoffLimitExceeded"),
        ("Normal", "EgressRestricted"),
    ],
    "config-error": [
        ("Normal", "Accepted"),
        ("Warning", "ConfigError"),
        ("Normal", "EgressRestricted"),
    ],
}


@pytest.mark.parametrize("case", sorted(FIRST_EVENTS))
def test_first_reconcile_events(case: str) -> None:
    events = transition_events(None, _render(case))
    assert [(e.type, e.reason) for e in events] == FIRST_EVENTS[case]
    assert all(isinstance(e, EventSpec) and e.message for e in events)


def test_every_status_case_has_a_sane_event_list() -> None:
    for name, make, observed, _, _ in CASES:
        events = transition_events(None, desired_status(make(), observed, T0))
        assert all(e.type in ("Normal", "Warning") for e in events), name
        assert all(len(e.message) <= 1024 for e in events), name
        assert len({e.reason for e in events}) == len(events), name  # no duplicates


def test_failure_after_running_is_one_warning() -> None:
    running = _render("running")
    doc = run(status=running)
    failed = desired_status(
        doc,
        Observed(
            1,
            job(
                conditions=[
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "too long",
                        "lastTransitionTime": "2026-12-01T12:00:00Z",
                    }
                ]
            ),
        ),
        T0,
    )
    events = transition_events(running, failed)
    assert [(e.type, e.reason) for e in events] == [("Warning", "DeadlineExceeded")]
    assert "activeDeadlineSeconds" in events[0].message


def test_a_failed_pod_that_is_retried_warns() -> None:
    running = _render("running")
    doc = run(status=running)
    retrying = desired_status(doc, Observed(1, job(active=1, failed=1)), T0)
    events = transition_events(running, retrying)
    assert [(e.type, e.reason) for e in events] == [("Warning", "Retrying")]
    assert retrying["phase"] == "Pending"
    assert retrying["startTime"] == running["startTime"]


def _with_reported(status: dict[str, Any], value: str, reason: str, message: str) -> Any:
    others = [c for c in status["conditions"] if c["type"] != "Reported"]
    cond = {
        "type": "Reported",
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T12:00:00Z",
    }
    return {**status, "conditions": [*others, cond]}


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # nothing while the run works, nor when reporting is off or the run failed
        (None, ("False", "Pending", "once finished"), []),
        (("False", "Pending", "once finished"), ("False", "Pending", "once finished"), []),
        (None, ("False", "Disabled", "off"), []),
        (("False", "Pending", "once finished"), ("False", "RunFailed", "failed"), []),
        (
            ("False", "Pending", "once finished"),
            ("True", "Reported", "all"),
            [("Normal", "Reported")],
        ),
        (("True", "Reported", "all"), ("True", "Reported", "all"), []),
        (("False", "Pending", "x"), ("False", "Retrying", "r"), [("Warning", "ReportRetrying")]),
        (("False", "Retrying", "r"), ("False", "Retrying", "r2"), []),
        (
            ("False", "Retrying", "r"),
            ("False", "Pending", "gave up"),
            [("Warning", "ReportPending")],
        ),
        (("False", "Retrying", "r"), ("False", "Rejected", "401"), [("Warning", "ReportRejected")]),
    ],
)
def test_reported_transitions_become_events(
    before: tuple[str, str, str] | None,
    after: tuple[str, str, str],
    expected: list[tuple[str, str]],
) -> None:
    base = _render("succeeded")
    old = (
        _with_reported(base, *before)
        if before
        else {
            **base,
            "conditions": [c for c in base["conditions"] if c["type"] != "Reported"],
        }
    )
    new = _with_reported(base, *after)
    events = transition_events(old, new)
    assert [(e.type, e.reason) for e in events] == expected


def test_reported_event_messages_are_scrubbed() -> None:
    base = _render("succeeded")
    old = _with_reported(base, "False", "Pending", "once finished")
    new = _with_reported(base, "False", "Rejected", f"HTTP 401; token={CANARY}")
    (event,) = transition_events(old, new)
    assert CANARY not in event.message


def test_event_messages_are_bounded_and_scrubbed() -> None:
    doc = run()
    status = desired_status(
        doc,
        Observed(1, None, problems=[Problem("SecretNotFound", f"x{'y' * 5000} Bearer {CANARY}")]),
        T0,
    )
    (warning, *_) = transition_events(None, status)
    assert warning.type == "Warning"
    assert len(warning.message) <= 1024
    assert CANARY not in warning.message


# --- metrics ---


def _samples() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in metrics.REGISTRY.collect():
        out[family.name] = list(family.samples)
    return out


def test_metric_names_and_bounded_labels() -> None:
    families = _samples()
    assert {
        "sift_operator_runs",
        "sift_operator_run_outcomes",
        "sift_operator_reconcile_duration_seconds",
        "sift_operator_reconcile_errors",
        "sift_operator_queue_wait_seconds",
        "sift_operator_run_duration_seconds",
    } <= set(families)
    allowed = {"phase", "outcome", "le", "endpoint", "result", "reason"}  # all fixed lists
    for name, samples in families.items():
        for sample in samples:
            assert set(sample.labels) <= allowed, (name, sample.labels)
    phases = {s.labels["phase"] for s in families["sift_operator_runs"]}
    assert phases == set(metrics.PHASES)
    # a private registry: importing the operator does not pollute the process default
    default_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert "sift_operator_runs" not in default_names


def test_phase_gauge_sets_every_phase() -> None:
    metrics.set_phase_counts({"Running": 3, "Queued": 2})
    metrics.set_phase_counts({"Running": 1})
    values = {s.labels["phase"]: s.value for s in _samples()["sift_operator_runs"]}
    assert values == {"Pending": 0, "Queued": 0, "Running": 1, "Succeeded": 0, "Failed": 0}


def test_reporting_gauge_sets_every_reason() -> None:
    metrics.set_report_counts({"Retrying": 2, "Reported": 5, "SomethingNew": 1})
    metrics.set_report_counts({"Retrying": 1, "Reported": 6})
    values = {s.labels["reason"]: s.value for s in _samples()["sift_operator_runs_reporting"]}
    assert values == dict.fromkeys(metrics.REPORT_REASONS, 0.0) | {"Retrying": 1, "Reported": 6}
    metrics.set_report_counts({"SomethingNew": 1})  # unknown reasons: counted, no new series
    values = {s.labels["reason"]: s.value for s in _samples()["sift_operator_runs_reporting"]}
    assert values["None"] == 1
    assert set(values) == set(metrics.REPORT_REASONS)


def test_outcome_counter() -> None:
    def count(outcome: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "sift_operator_run_outcomes_total", {"outcome": outcome}
        )
        assert value is not None
        return value

    before_ok, before_bad = count("succeeded"), count("failed")
    metrics.record_outcome(True)
    metrics.record_outcome(False)
    metrics.record_outcome(False)
    assert count("succeeded") == before_ok + 1
    assert count("failed") == before_bad + 2
    metrics.RECONCILE_DURATION.observe(0.02)
    assert metrics.REGISTRY.get_sample_value("sift_operator_reconcile_duration_seconds_count")


# --- docs/operator.md stays complete ---

DOC = (ROOT / "docs" / "operator.md").read_text()
B_REASONS = ("ApiHostUnresolved", "CreateFailed", "CiliumUnavailable")  # the handler's problems


def test_docs_list_every_condition_and_reason() -> None:
    values = [
        v
        for k, v in vars(conditions).items()
        if k.isupper() and isinstance(v, str) and k != "REPORTED"
    ]
    assert len(values) > 30
    missing = [v for v in [*values, *B_REASONS] if f"`{v}`" not in DOC]
    assert missing == [], f"docs/operator.md does not explain {missing}"


def test_docs_list_every_metric_and_setting() -> None:
    for family in metrics.REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in DOC, name
    for field in OperatorSettings.model_fields:
        assert f"SIFT_{field.upper()}" in DOC, field


def test_normal_events_of_one_reconcile_are_merged_warnings_are_not() -> None:
    accepted = EventSpec("Normal", "Accepted", "the spec is valid")
    created = EventSpec("Normal", "JobCreated", "created the worker Job")
    egress = EventSpec("Normal", "EgressRestricted", "NetworkPolicy: ...")
    warning = EventSpec("Warning", "QuotaExceeded", "no quota")
    (one,) = merged([accepted, created, egress])
    assert one.reason == "JobCreated"
    assert one.message == (
        "created the worker Job; Accepted: the spec is valid; EgressRestricted: NetworkPolicy: ..."
    )
    out = merged([accepted, warning, egress])
    assert [(e.type, e.reason) for e in out] == [
        ("Normal", "Accepted"),
        ("Warning", "QuotaExceeded"),
    ]
    assert "EgressRestricted: " in out[0].message
    assert merged([warning, created]) == [warning, created]
