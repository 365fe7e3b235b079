"""The Reported condition from the worker's termination message, and the report Job."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import kubernetes_validate
import pytest
from golden import CANARY, as_stored, example
from sift_operator.children.reportjob import build_report_job, report_job_name
from sift_operator.settings import OperatorSettings
from sift_operator.status import (
    Observed,
    ReportState,
    desired_status,
    parse_report_message,
    report_state,
    reported_condition,
)
from test_children_golden import KUBERNETES_VERSIONS
from test_status import T0, jcond, job, run

Obj = dict[str, Any]
DONE = "2026-12-01T10:00:00Z"  # the run's completion; T0 is 5 s later


def message(reported: str, reason: str = "", chunks: int = 3, acked: int = 3) -> str:
    return json.dumps({"reported": reported, "reason": reason, "chunks": chunks, "acked": acked})


def ended(msg: str | None, at: str = DONE, name: str = "worker") -> Obj:
    term: Obj = {"exitCode": 0, "finishedAt": at}
    if msg is not None:
        term["message"] = msg
    return {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": name, "state": {"terminated": term}}],
        },
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (message("Reported"), ReportState("Reported", "", 3, 3)),
        (message("Pending", "HTTP 503", 3, 1), ReportState("Pending", "HTTP 503", 3, 1)),
        (message("Rejected", "HTTP 401"), ReportState("Rejected", "HTTP 401", 3, 3)),
        (json.dumps({"reported": "Maybe"}), None),  # not a state
        (
            json.dumps({"reported": "Reported", "chunks": -1, "acked": True}),
            ReportState("Reported", "", 0, 0),
        ),
        ("Error: out of memory", None),  # a plain message written by something else
        ("{not json", None),
        (None, None),
    ],
)
def test_parse_report_message(text: Any, expected: ReportState | None) -> None:
    assert parse_report_message(text) == expected


def test_report_message_reason_is_scrubbed() -> None:
    state = parse_report_message(message("Rejected", f"HTTP 401 Authorization: Bearer {CANARY}"))
    assert state is not None
    assert CANARY not in state.reason


def test_the_newest_terminated_worker_container_wins() -> None:
    pods = [
        ended(message("Pending"), "2026-12-01T10:00:00Z"),
        ended(message("Reported"), "2026-12-01T10:05:00Z"),
        ended(message("Rejected"), "2026-12-01T10:09:00Z", name="sidecar"),  # not the worker
        {"metadata": {"name": "running"}, "status": {"phase": "Running"}},
    ]
    state = report_state(pods)
    assert state is not None
    assert state.reported == "Reported"
    assert report_state([ended(None)]) is None


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (["Pending", "Reported"], "Reported"),  # the worker's pod, then the report Job's
        (["Reported", "Pending"], "Pending"),
        (["Pending", "Pending", "Reported"], "Reported"),
    ],
)
def test_on_a_tie_of_finished_at_the_later_pod_wins(order: list[str], expected: str) -> None:
    """finishedAt has whole seconds: a report pod ending in its worker's second (the CI
    flake of stop 16) must not leave the run Retrying."""
    pods = [ended(message(reported), "2026-12-01T10:00:00Z") for reported in order]
    state = report_state(pods)
    assert state is not None
    assert state.reported == expected


OK, FAIL, WORKING = True, False, None


def _cond(**kw: Any) -> tuple[bool, str, str]:
    args: dict[str, Any] = {
        "enabled": True,
        "outcome_succeeded": OK,
        "state": None,
        "report_job_failed": False,
        "completion_time": DONE,
        "retry_seconds": 3600,
        "old": None,
        "was_terminal": False,
        "now": T0,
    }
    args.update(kw)
    return reported_condition(**args)


PENDING = ReportState("Pending", "results API PUT /v1/runs/x: HTTP 503", 3, 1)
OLD_RETRYING = {"status": "False", "reason": "Retrying", "message": "1 of 3; retries until ..."}
OLD_REPORTED = {"status": "True", "reason": "Reported", "message": "all 3 chunks"}
OLD_GAVE_UP = {"status": "False", "reason": "Pending", "message": "gave up after ..."}

CASES: list[tuple[str, dict[str, Any], bool, str]] = [
    ("disabled", {"enabled": False}, False, "Disabled"),
    (
        "disabled-even-when-done",
        {"enabled": False, "state": ReportState("Reported", "", 1, 1)},
        False,
        "Disabled",
    ),
    ("run-working", {"outcome_succeeded": WORKING}, False, "Pending"),
    ("run-failed", {"outcome_succeeded": FAIL}, False, "RunFailed"),
    ("reported", {"state": ReportState("Reported", "", 3, 3)}, True, "Reported"),
    ("rejected", {"state": ReportState("Rejected", "HTTP 401", 3, 0)}, False, "Rejected"),
    ("pending-retries", {"state": PENDING}, False, "Retrying"),
    ("pending-no-window", {"state": PENDING, "retry_seconds": 0}, False, "Pending"),
    ("pending-window-over", {"state": PENDING, "now": T0 + timedelta(hours=2)}, False, "Pending"),
    ("report-job-gave-up", {"state": PENDING, "report_job_failed": True}, False, "Pending"),
    ("no-message", {"state": None}, False, "Pending"),
    # the pods are gone (Job TTL): a run that was over keeps what it said
    ("kept-reported", {"old": OLD_REPORTED, "was_terminal": True}, True, "Reported"),
    ("kept-gave-up", {"old": OLD_GAVE_UP, "was_terminal": True}, False, "Pending"),
    ("kept-retrying", {"old": OLD_RETRYING, "was_terminal": True}, False, "Retrying"),
    (
        "retrying-expires-without-pods",
        {"old": OLD_RETRYING, "was_terminal": True, "now": T0 + timedelta(hours=2)},
        False,
        "Pending",
    ),
]


@pytest.mark.parametrize(("case", "kw", "value", "reason"), CASES, ids=[c[0] for c in CASES])
def test_reported_condition_table(case: str, kw: dict[str, Any], value: bool, reason: str) -> None:
    status, got, text = _cond(**kw)
    assert (status, got) == (value, reason), text
    assert text


def test_messages_say_what_to_do() -> None:
    _, _, retrying = _cond(state=PENDING)
    assert "1 of 3 chunks acknowledged" in retrying
    assert "2026-12-01T11:00:00Z" in retrying
    assert "HTTP 503" in retrying
    _, _, gave_up = _cond(state=PENDING, retry_seconds=0)
    assert "sift-worker report" in gave_up


def _report_run() -> Obj:
    doc = run()
    assert doc["spec"].get("report") is not None
    return doc


def test_status_reports_from_the_worker_pod() -> None:
    finished = job(conditions=[jcond("Complete", at=DONE)], completionTime=DONE)
    status = desired_status(
        _report_run(), Observed(1, finished, pods=[ended(message("Reported"))]), T0
    )
    cond = next(c for c in status["conditions"] if c["type"] == "Reported")
    assert (cond["status"], cond["reason"]) == ("True", "Reported")
    no_report = run()
    del no_report["spec"]["report"]
    status = desired_status(no_report, Observed(1, finished), T0)
    cond = next(c for c in status["conditions"] if c["type"] == "Reported")
    assert (cond["status"], cond["reason"]) == ("False", "Disabled")


def test_status_follows_the_report_job() -> None:
    finished = job(conditions=[jcond("Complete", at=DONE)], completionTime=DONE)
    doc = _report_run()
    first = desired_status(
        doc, Observed(1, finished, pods=[ended(message("Pending", "", 3, 1))]), T0
    )
    assert next(c for c in first["conditions"] if c["type"] == "Reported")["reason"] == "Retrying"
    doc["status"] = first
    report = {"metadata": {"name": "x"}, "status": {}}
    later = "2026-12-01T10:20:00Z"
    second = desired_status(
        doc,
        Observed(
            1,
            None,  # the worker Job is gone (TTL)
            report_job=report,
            report_pods=[ended(message("Reported"), later)],
        ),
        T0 + timedelta(minutes=20),
    )
    cond = next(c for c in second["conditions"] if c["type"] == "Reported")
    assert (cond["status"], cond["reason"]) == ("True", "Reported")
    assert second["phase"] == "Succeeded"


def test_report_job_shape() -> None:
    doc = _report_run()
    settings = OperatorSettings()
    built = build_report_job(doc, settings, deadline_seconds=1234)
    name = doc["metadata"]["name"]
    assert built["metadata"]["name"] == report_job_name(name) == f"sift-{name}-report"
    spec = built["spec"]
    assert spec["activeDeadlineSeconds"] == 1234
    assert spec["suspend"] is False
    assert "kueue.x-k8s.io/queue-name" not in built["metadata"]["labels"]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [5]
    assert rules[0]["action"] == "FailJob"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["report", "/etc/sift/run.yaml"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SIFT_RESULTS_TOKEN_FILE"] == "/var/run/secrets/sift.dev/results/token"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    # the same hardened pod as the worker's, and the run's NetworkPolicy selects it
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    assert spec["template"]["metadata"]["labels"]["sift.dev/run-uid"] == doc["metadata"]["uid"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(built, version, strict=True)
    long_name = as_stored(example("full"))
    long_name["metadata"]["name"] = "x" * 200
    assert len(report_job_name(long_name["metadata"]["name"])) <= 63
