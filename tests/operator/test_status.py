"""desired_status: every phase, every reason, times, progress, bounds, and no secrets."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from golden import CANARY, as_stored, assert_golden, example, goldens
from k8s_schema import api_server_errors
from sift_operator.conditions import timestamp
from sift_operator.crd import openapi_schema
from sift_operator.events import transition_events
from sift_operator.status import Observed, Problem, desired_status, is_terminal
from sift_worker.api.v1alpha1 import SelectionRunStatus

Obj = dict[str, Any]
T0 = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)
KUEUE = {"kueue.x-k8s.io/queue-name": "gpu-batch"}


def run(*, queue: bool = False, suspend: bool = False, status: Obj | None = None) -> Obj:
    doc = as_stored(example("full"))
    if not queue:
        del doc["spec"]["worker"]["queueName"]
    if suspend:
        doc["spec"]["suspend"] = True
    if status is not None:
        doc["status"] = status
    return doc


def job(
    *,
    suspend: bool = False,
    labels: Obj | None = None,
    conditions: list[Obj] | None = None,
    **status: Any,
) -> Obj:
    return {
        "metadata": {"name": "sift-weekly-curation", "labels": labels or {}},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], **status},
    }


def jcond(type_: str, reason: str = "", message: str = "", at: str = "2026-12-01T11:00:00Z") -> Obj:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
    }


def pod(phase: str = "Pending", **status: Any) -> Obj:
    return {
        "metadata": {"name": "sift-weekly-curation-abcde"},
        "status": {"phase": phase, **status},
    }


RUNNING_POD = pod(
    "Running",
    startTime="2026-12-01T10:01:00Z",
    containerStatuses=[
        {"name": "worker", "state": {"running": {"startedAt": "2026-12-01T10:01:30Z"}}}
    ],
)
REPORTED_POD = pod(
    "Succeeded",
    containerStatuses=[
        {
            "name": "worker",
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "finishedAt": "2026-12-01T10:04:00Z",
                    "message": json.dumps(
                        {"reported": "Reported", "reason": "", "chunks": 2, "acked": 2}
                    ),
                }
            },
        }
    ],
)
UNSCHEDULABLE_POD = pod(
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        }
    ],
)
IMAGE_POD = pod(
    containerStatuses=[
        {
            "name": "worker",
            "image": "registry.example.com/sift-worker:1.0.0",
            "state": {
                "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
            },
        }
    ],
)
CONFIG_POD = pod(
    containerStatuses=[
        {
            "name": "worker",
            "state": {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'configmap "sift-x" not found',
                }
            },
        }
    ],
)

# (case, run, observed, expected phase, {condition type: (status, reason)})
CASES: list[tuple[str, Callable[[], Obj], Observed, str, dict[str, tuple[str, str]]]] = [
    (
        "new",
        run,
        Observed(1, None),
        "Pending",
        {"Accepted": ("True", "SpecValid"), "Running": ("False", "NotStarted")},
    ),
    (
        "secret-missing",
        run,
        Observed(
            1, None, problems=[Problem("SecretNotFound", 'Secret "s3-reader" not found in ml-data')]
        ),
        "Pending",
        {"Accepted": ("False", "SecretNotFound"), "Queued": ("False", "NotQueued")},
    ),
    (
        "waiting-for-slot",
        run,
        Observed(1, None, waiting_for_slot=True),
        "Queued",
        {"Queued": ("True", "WaitingForSlot"), "Running": ("False", "NotStarted")},
    ),
    (
        "waiting-for-slot-suspended-job",
        run,
        Observed(1, job(suspend=True), waiting_for_slot=True),
        "Queued",
        {"Queued": ("True", "WaitingForSlot")},
    ),
    (
        "kueue",
        lambda: run(queue=True),
        Observed(1, job(suspend=True, labels=KUEUE)),
        "Queued",
        {"Queued": ("True", "QueuedByKueue")},
    ),
    (
        "suspended",
        lambda: run(suspend=True),
        Observed(1, job(suspend=True)),
        "Queued",
        {"Queued": ("True", "Suspended")},
    ),
    (
        "job-created",
        run,
        Observed(1, job(active=1), pods=[pod()]),
        "Pending",
        {"Queued": ("False", "Admitted"), "Running": ("False", "JobCreated")},
    ),
    (
        "unschedulable",
        run,
        Observed(1, job(active=1), pods=[UNSCHEDULABLE_POD]),
        "Pending",
        {"Running": ("False", "Unschedulable")},
    ),
    (
        "image-pull",
        run,
        Observed(1, job(active=1), pods=[IMAGE_POD]),
        "Pending",
        {"Running": ("False", "ImagePullFailed")},
    ),
    (
        "container-config",
        run,
        Observed(1, job(active=1), pods=[CONFIG_POD]),
        "Pending",
        {"Running": ("False", "ContainerConfigError")},
    ),
    (
        "quota",
        run,
        Observed(
            1,
            job(),
            problems=[Problem("QuotaExceeded", 'exceeded quota "gpus": requested 1, limit 0')],
        ),
        "Pending",
        {"Running": ("False", "QuotaExceeded"), "Accepted": ("True", "SpecValid")},
    ),
    (
        "retrying",
        run,
        Observed(1, job(active=1, failed=1), pods=[pod("Failed"), pod()]),
        "Pending",
        {"Running": ("False", "Retrying")},
    ),
    (
        "running",
        run,
        Observed(
            1,
            job(active=1, ready=1, startTime="2026-12-01T10:00:58Z"),
            pods=[RUNNING_POD],
            progress={"stage": "embedding", "done": 5300, "total": 12000},
        ),
        "Running",
        {"Running": ("True", "PodsRunning"), "Queued": ("False", "Admitted")},
    ),
    (
        "running-cilium",
        run,
        Observed(1, job(active=1, ready=1), pods=[RUNNING_POD], egress="NetworkPolicyAndCilium"),
        "Running",
        {"EgressRestricted": ("True", "NetworkPolicyAndCilium")},
    ),
    (
        "no-egress-policy",
        run,
        Observed(1, None, egress="CiliumUnavailable"),
        "Pending",
        {"EgressRestricted": ("False", "CiliumUnavailable")},
    ),
    (
        "spec-change-ignored",
        run,
        Observed(2, job(active=1, ready=1), pods=[RUNNING_POD], spec_change_ignored=True),
        "Running",
        {"Accepted": ("True", "SpecChangeIgnored")},
    ),
    (
        "succeeded",
        run,
        Observed(
            1,
            job(
                conditions=[jcond("Complete")],
                succeeded=1,
                startTime="2026-12-01T10:00:58Z",
                completionTime="2026-12-01T11:00:00Z",
            ),
            result={
                "selected": 1000,
                "total": 12000,
                "corrupt": 3,
                "duplicates": 41,
                "artifacts": "s3://curation/sift/ml-data/weekly-curation/u/",
            },
        ),
        "Succeeded",
        {
            "Succeeded": ("True", "JobComplete"),
            "Failed": ("False", "NoFailure"),
            "Running": ("False", "Finished"),
        },
    ),
    (
        "backoff",
        run,
        Observed(
            1,
            job(
                conditions=[
                    jcond(
                        "Failed",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    )
                ]
            ),
        ),
        "Failed",
        {"Failed": ("True", "BackoffLimitExceeded"), "Succeeded": ("False", "RunFailed")},
    ),
    (
        "deadline",
        run,
        Observed(
            1,
            job(
                conditions=[
                    jcond(
                        "Failed",
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                    )
                ]
            ),
        ),
        "Failed",
        {"Failed": ("True", "DeadlineExceeded")},
    ),
    (
        "config-error",
        run,
        Observed(
            1,
            job(
                conditions=[
                    jcond(
                        "FailureTarget",
                        "PodFailurePolicy",
                        "Container worker for pod ml-data/x failed with exit code 3 "
                        "matching FailJob rule at index 0",
                    )
                ]
            ),
        ),
        "Failed",
        {"Failed": ("True", "ConfigError")},
    ),
    (
        "other-failure",
        run,
        Observed(1, job(conditions=[jcond("Failed", "MaxFailedIndexesExceeded")])),
        "Failed",
        {"Failed": ("True", "JobFailed")},
    ),
]


def _observed(case: str) -> Observed:
    return next(c[2] for c in CASES if c[0] == case)


def _render(case: str) -> Obj:
    for name, make, observed, _, _ in CASES:
        if name == case:
            return desired_status(make(), observed, T0)
    raise KeyError(case)


@pytest.mark.parametrize(
    ("case", "make", "observed", "phase", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_status_table(
    case: str,
    make: Callable[[], Obj],
    observed: Observed,
    phase: str,
    expected: dict[str, tuple[str, str]],
) -> None:
    status = desired_status(make(), observed, T0)
    assert status["phase"] == phase
    conds = {c["type"]: c for c in status["conditions"]}
    for type_, (value, reason) in expected.items():
        assert (conds[type_]["status"], conds[type_]["reason"]) == (value, reason), type_
    assert [c["type"] for c in status["conditions"]] == [
        "Accepted",
        "Queued",
        "Running",
        "Succeeded",
        "Failed",
        "EgressRestricted",
        "Reported",
    ]
    assert status["observedGeneration"] == observed.generation
    assert all(c["observedGeneration"] == observed.generation for c in status["conditions"])
    SelectionRunStatus.model_validate(status)
    manifest = {**make(), "status": status}
    assert api_server_errors(openapi_schema(), manifest) == []  # the CRD's status schema, too
    assert_golden(f"status-{case}", status)


def test_no_stale_status_goldens() -> None:
    assert goldens("status-") == {f"status-{c[0]}" for c in CASES}


def test_times() -> None:
    running = _render("running")
    assert running["startTime"] == "2026-12-01T10:01:00Z"  # the pod's start
    assert "completionTime" not in running
    assert running["progress"] == {
        "stage": "embedding",
        "done": 5300,
        "total": 12000,
        "percent": 44,
    }
    succeeded = _render("succeeded")
    assert succeeded["startTime"] == "2026-12-01T10:00:58Z"  # no pod seen running: the Job's
    assert succeeded["completionTime"] == "2026-12-01T11:00:00Z"
    assert "selected 1000 of 12000" in succeeded["conditions"][3]["message"]
    failed = _render("deadline")
    assert failed["completionTime"] == "2026-12-01T11:00:00Z"  # the Failed condition's time
    assert "startTime" not in _render("job-created")


def _step(doc: Obj, observed: Observed, at: datetime) -> tuple[Obj, list[Any]]:
    old = doc.get("status")
    new = desired_status(doc, observed, at)
    doc["status"] = new
    return new, transition_events(old, new)


def test_lifecycle_keeps_transition_times_and_emits_one_event_per_transition() -> None:
    doc = run(queue=True)
    t = [T0 + timedelta(minutes=i) for i in range(8)]
    s1, e1 = _step(doc, Observed(1, None), t[0])
    assert s1["phase"] == "Pending"
    assert [(e.type, e.reason) for e in e1] == [
        ("Normal", "Accepted"),
        ("Normal", "EgressRestricted"),
    ]
    s2, e2 = _step(doc, Observed(1, job(suspend=True, labels=KUEUE)), t[1])
    assert s2["phase"] == "Queued"
    assert [(e.type, e.reason) for e in e2] == [("Normal", "QueuedByKueue")]
    same, none = _step(doc, Observed(1, job(suspend=True, labels=KUEUE)), t[2])
    assert same == s2  # a reconcile that changes nothing says nothing
    assert none == []
    s3, e3 = _step(doc, Observed(1, job(active=1, labels=KUEUE), pods=[pod()]), t[3])
    assert s3["phase"] == "Pending"
    assert [(e.type, e.reason) for e in e3] == [("Normal", "Admitted"), ("Normal", "JobCreated")]
    s4, e4 = _step(doc, Observed(1, job(active=1, ready=1, labels=KUEUE), pods=[RUNNING_POD]), t[4])
    assert s4["phase"] == "Running"
    assert [(e.type, e.reason) for e in e4] == [("Normal", "Started")]
    s5, e5 = _step(
        doc,
        Observed(
            1,
            job(labels=KUEUE, conditions=[jcond("Complete")], completionTime=timestamp(t[5])),
            pods=[REPORTED_POD],
            result={"selected": 10, "total": 20},
        ),
        t[6],
    )
    assert s5["phase"] == "Succeeded"
    assert [(e.type, e.reason) for e in e5] == [("Normal", "Succeeded"), ("Normal", "Reported")]
    assert s5["completionTime"] == timestamp(t[5])
    by = {c["type"]: c["lastTransitionTime"] for c in s5["conditions"]}
    assert by["Accepted"] == timestamp(t[0])  # never changed status
    assert by["EgressRestricted"] == timestamp(t[0])
    assert by["Queued"] == timestamp(t[3])  # True at t1, False at t3
    assert by["Running"] == timestamp(t[6])  # True at t4, False at t6
    assert by["Succeeded"] == timestamp(t[6])
    assert by["Failed"] == timestamp(t[0])
    # the Job is garbage-collected after its TTL: the run stays Succeeded, times unchanged
    s6, e6 = _step(doc, Observed(1, None), t[7])
    assert s6 == s5
    assert e6 == []
    assert is_terminal(s6)


def test_reason_change_without_status_change_keeps_transition_time() -> None:
    doc = run()
    first = desired_status(doc, Observed(1, job(active=1), pods=[UNSCHEDULABLE_POD]), T0)
    doc["status"] = first
    later = desired_status(
        doc, Observed(1, job(active=1), pods=[IMAGE_POD]), T0 + timedelta(hours=1)
    )
    running = next(c for c in later["conditions"] if c["type"] == "Running")
    assert running["reason"] == "ImagePullFailed"
    assert running["lastTransitionTime"] == timestamp(T0)
    events = transition_events(first, later)
    assert [(e.type, e.reason) for e in events] == [("Warning", "ImagePullFailed")]


def test_recovery_after_the_secret_appears() -> None:
    doc = run()
    missing = Observed(
        1, None, problems=[Problem("SecretNotFound", 'Secret "s3-reader" not found')]
    )
    _, e1 = _step(doc, missing, T0)
    assert (e1[0].type, e1[0].reason) == ("Warning", "SecretNotFound")
    s2, e2 = _step(doc, Observed(1, job(active=1), pods=[pod()]), T0 + timedelta(minutes=5))
    assert s2["conditions"][0]["status"] == "True"
    assert ("Normal", "Accepted") in [(e.type, e.reason) for e in e2]


def test_a_secret_deleted_after_the_job_exists_does_not_unaccept_the_run() -> None:
    gone = [Problem("SecretNotFound", "Secret s3-reader does not exist")]
    doc = run(status=_render("running"))
    running = desired_status(
        doc, Observed(1, job(active=1, ready=1), pods=[RUNNING_POD], problems=gone), T0
    )
    assert running["phase"] == "Running"
    assert running["conditions"][0]["reason"] == "SpecValid"
    pending = desired_status(run(), Observed(1, job(active=1), pods=[pod()], problems=gone), T0)
    assert pending["phase"] == "Pending"
    assert pending["conditions"][0]["status"] == "True"
    assert pending["conditions"][2]["reason"] == "SecretNotFound"


def test_buckets_without_storage_cidrs_are_called_out() -> None:
    doc = run()
    doc["spec"]["egress"]["storageCIDRs"] = []
    status = desired_status(doc, Observed(1, None), T0)
    message = status["conditions"][5]["message"]
    assert "cannot reach" in message
    assert "s3.amazonaws.com" in message
    assert "spec.egress.storageCIDRs" in message
    # pinned CIDRs, a volume datasource or Cilium's toFQDNs: nothing to say
    assert "cannot reach" not in _render("running")["conditions"][5]["message"]
    assert "cannot reach" not in _render("running-cilium")["conditions"][5]["message"]


def test_decided_outcome_never_flips() -> None:
    doc = run(status=_render("succeeded"))
    weird = Observed(1, job(conditions=[jcond("Failed", "BackoffLimitExceeded")]))
    status = desired_status(doc, weird, T0 + timedelta(days=1))
    assert status["phase"] == "Succeeded"
    doc = run(status=_render("deadline"))
    status = desired_status(doc, Observed(1, None), T0 + timedelta(days=9))
    assert status["phase"] == "Failed"
    assert status["conditions"][4]["reason"] == "DeadlineExceeded"


def test_spec_change_ignored_warns_once_per_generation() -> None:
    doc = run(status=_render("running"))
    s2, e2 = _step(doc, replace(_observed("spec-change-ignored"), generation=2), T0)
    assert [(e.type, e.reason) for e in e2] == [("Warning", "SpecChangeIgnored")]
    _, again = _step(doc, replace(_observed("spec-change-ignored"), generation=2), T0)
    assert again == []
    _, third = _step(doc, replace(_observed("spec-change-ignored"), generation=3), T0)
    assert [(e.type, e.reason) for e in third] == [("Warning", "SpecChangeIgnored")]
    assert "generation 2" in s2["conditions"][0]["message"]


def test_unknown_conditions_are_kept() -> None:
    reported = {
        "type": "BrokerReady",
        "status": "False",
        "reason": "ApiUnavailable",
        "message": "results API down; retrying",
        "lastTransitionTime": "2026-12-01T09:00:00Z",
        "observedGeneration": 1,
    }
    doc = run(status={"conditions": [reported]})
    status = desired_status(doc, Observed(1, None), T0)
    assert status["conditions"][-1] == reported


def test_status_is_bounded() -> None:
    huge = "x" * 100_000
    doc = run(
        status={
            "conditions": [
                {
                    "type": f"Extra{i}",
                    "status": "True",
                    "reason": "R",
                    "message": huge,
                    "lastTransitionTime": "2026-12-01T09:00:00Z",
                }
                for i in range(20)
            ],
        }
    )
    observed = Observed(
        1,
        job(active=1),
        pods=[
            pod(
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": huge,
                    }
                ]
            )
        ]
        * 50,
        problems=[Problem("QuotaExceeded", huge)] * 50,
        progress={"stage": huge, "done": 10**12, "total": 5},
        result={"selected": 1, "total": 1, "artifacts": huge},
    )
    status = desired_status(doc, observed, T0)
    assert len(status["conditions"]) == 16
    assert all(len(c["message"]) <= 1024 for c in status["conditions"])
    assert len(status["progress"]["stage"]) <= 63
    assert status["progress"]["percent"] == 100
    assert len(json.dumps(status)) < 24 * 1024
    SelectionRunStatus.model_validate(status)


SECRETS = [
    f"https://raw-frames.s3.amazonaws.com/a.jpg?X-Amz-Signature={CANARY}&X-Amz-Credential=AKIA",
    f"Authorization: Bearer {CANARY}",
    f"token={CANARY}",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ." + CANARY,
]


@pytest.mark.parametrize("secret", SECRETS, ids=["signed-url", "bearer", "token", "jwt"])
def test_no_secret_reaches_status_or_events(secret: str) -> None:
    doc = run()
    leaky_pod = pod(
        containerStatuses=[
            {
                "name": "worker",
                "image": "r/w:1",
                "state": {"waiting": {"reason": "ErrImagePull", "message": secret}},
            }
        ],
    )
    observed = Observed(
        1,
        job(active=1, conditions=[]),
        pods=[leaky_pod],
        problems=[Problem("QuotaExceeded", f"failed: {secret}")],
        progress={"stage": "embedding", "done": 1, "total": 2},
        result={"selected": 1, "total": 2, "artifacts": secret},
    )
    status = desired_status(doc, observed, T0)
    events = transition_events(None, status)
    failed = desired_status(
        run(), Observed(1, job(conditions=[jcond("Failed", "BackoffLimitExceeded", secret)])), T0
    )
    missing = desired_status(
        run(), Observed(1, None, problems=[Problem("SecretNotFound", secret)]), T0
    )
    blob = json.dumps(
        [
            status,
            failed,
            missing,
            [e.__dict__ for e in events],
            [e.__dict__ for e in transition_events(None, failed)],
            [e.__dict__ for e in transition_events(None, missing)],
        ]
    )
    assert CANARY not in blob


def test_status_is_a_fixpoint() -> None:
    for name, make, observed, _, _ in CASES:
        doc = make()
        first = desired_status(doc, observed, T0)
        doc["status"] = copy.deepcopy(first)
        again = desired_status(doc, observed, T0 + timedelta(hours=3))
        assert again == first, name
        assert transition_events(first, again) == [], name
