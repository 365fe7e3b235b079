"""The Argo CD health check (deploy/argocd/health.lua) on SelectionRuns, run in Lua 5.1.

Most fixtures are the operator's own ``desired_status`` output for real observations
(so they cannot drift from what the operator writes); two are hand-made states the
operator cannot produce itself (no status yet, a generation it has not seen).
Regenerate with ``SIFT_UPDATE_GOLDEN=1``. The argocd-cm snippet is drift-tested too.
"""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml
from sift_operator.status import Observed, Problem, desired_status

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "deploy" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm.yaml"
FIXTURES = Path(__file__).parent / "fixtures"
UPDATE = os.environ.get("SIFT_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
Obj = dict[str, Any]


def base_run(*, generation: int = 1, suspend: bool = False) -> Obj:
    doc: Obj = yaml.safe_load((ROOT / "examples" / "full.yaml").read_text())
    doc["metadata"].update(uid="0b1c2d3e-0000-4000-8000-000000000001", generation=generation)
    doc["metadata"].setdefault("namespace", "ml-data")
    doc["spec"]["worker"].pop("queueName", None)
    if suspend:
        doc["spec"]["suspend"] = True
    return doc


def job(*, suspend: bool = False, conditions: list[Obj] | None = None, **status: Any) -> Obj:
    return {
        "metadata": {"name": "sift-x", "labels": {}},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], **status},
    }


def jcond(type_: str, reason: str = "", message: str = "") -> Obj:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T10:04:00Z",
    }


RUNNING_POD = {
    "metadata": {"name": "sift-x-abcde"},
    "status": {
        "phase": "Running",
        "startTime": "2026-12-01T10:01:00Z",
        "containerStatuses": [
            {"name": "worker", "state": {"running": {"startedAt": "2026-12-01T10:01:30Z"}}}
        ],
    },
}
UNSCHEDULABLE_POD = {
    "metadata": {"name": "sift-x-abcde"},
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
            }
        ],
    },
}

# case -> (run, what the operator observed, expected health, a word the message holds)
FROM_OPERATOR: dict[str, tuple[Obj, Observed, str, str]] = {
    "new": (base_run(), Observed(1, None), "Progressing", "NotStarted"),
    "waiting-for-slot": (
        base_run(),
        Observed(1, None, waiting_for_slot=True),
        "Progressing",
        "WaitingForSlot",
    ),
    "suspended": (base_run(suspend=True), Observed(1, job(suspend=True)), "Suspended", "Suspended"),
    "unschedulable": (
        base_run(),
        Observed(1, job(active=1), pods=[UNSCHEDULABLE_POD]),
        "Progressing",
        "Unschedulable",
    ),
    "running": (
        base_run(),
        Observed(1, job(active=1, ready=1), pods=[RUNNING_POD]),
        "Progressing",
        "PodsRunning",
    ),
    "succeeded": (
        base_run(),
        Observed(
            1,
            job(conditions=[jcond("Complete")], completionTime="2026-12-01T10:04:00Z"),
            pods=[],
        ),
        "Healthy",
        "JobComplete",
    ),
    "failed": (
        base_run(),
        Observed(1, job(conditions=[jcond("Failed", "BackoffLimitExceeded", "3 failed")])),
        "Degraded",
        "BackoffLimitExceeded",
    ),
    "invalid-spec": (
        base_run(),
        Observed(1, None, problems=[Problem("InvalidSpec", "spec.selection.nSamples: too big")]),
        "Degraded",
        "InvalidSpec",
    ),
    "secret-not-found": (
        base_run(),
        Observed(1, None, problems=[Problem("SecretNotFound", 'Secret "s3-reader" not found')]),
        "Degraded",
        "SecretNotFound",
    ),
}


def operator_fixture(case: str) -> Obj:
    run, observed, _, _ = FROM_OPERATOR[case]
    doc = copy.deepcopy(run)
    doc["status"] = desired_status(doc, observed, NOW)
    return doc


def hand_made() -> dict[str, tuple[Obj, str, str]]:
    no_status = base_run()
    behind = operator_fixture("running")
    behind["metadata"]["generation"] = 2  # edited; the operator has not reconciled it yet
    return {
        "no-status": (no_status, "Progressing", "Waiting for the Sift operator"),
        "generation-behind": (behind, "Progressing", "generation 2"),
    }


def all_cases() -> dict[str, tuple[Obj, str, str]]:
    cases = {k: (operator_fixture(k), v[2], v[3]) for k, v in FROM_OPERATOR.items()}
    return {**cases, **hand_made()}


def health(obj: Obj) -> dict[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(HEALTH.read_text())
    return {str(k): str(v) for k, v in dict(result).items()}


def _to_lua(runtime: Any, value: Any) -> Any:
    """Plain tables like Argo CD's (Lua lists start at 1; ipairs must work)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def test_fixtures_match_the_operator() -> None:
    FIXTURES.mkdir(exist_ok=True)
    stale = []
    for case, (obj, _, _) in all_cases().items():
        path = FIXTURES / f"{case}.yaml"
        text = yaml.safe_dump(obj, sort_keys=False)
        if UPDATE:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(path.name)
    assert not stale, f"fixtures drifted from desired_status (SIFT_UPDATE_GOLDEN=1): {stale}"
    extra = {p.stem for p in FIXTURES.glob("*.yaml")} - set(all_cases())
    assert not extra, f"fixtures without a case: {extra}"


@pytest.mark.parametrize("case", sorted(all_cases()))
def test_health_of_fixture(case: str) -> None:
    _, expected, word = all_cases()[case]
    obj = yaml.safe_load((FIXTURES / f"{case}.yaml").read_text())
    result = health(obj)
    assert result["status"] == expected, result
    assert word in result["message"], result


def test_degraded_message_is_the_conditions() -> None:
    obj = operator_fixture("secret-not-found")
    accepted = next(c for c in obj["status"]["conditions"] if c["type"] == "Accepted")
    assert health(obj)["message"] == f"SecretNotFound: {accepted['message']}"


def test_every_health_status_is_covered() -> None:
    assert {c[1] for c in all_cases().values()} == {
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
    }


def argocd_cm() -> str:
    body = HEALTH.read_text()
    indented = "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())
    return (
        "# Generated from deploy/argocd/health.lua by tests/packaging/test_argocd_health.py\n"
        "# (SIFT_UPDATE_GOLDEN=1). Merge into the argocd-cm ConfigMap (namespace argocd),\n"
        "# e.g. with the argo-cd Helm chart's configs.cm values.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: argocd-cm\n"
        "  namespace: argocd\n"
        "  labels:\n"
        "    app.kubernetes.io/name: argocd-cm\n"
        "    app.kubernetes.io/part-of: argocd\n"
        "data:\n"
        "  resource.customizations.health.sift.dev_SelectionRun: |\n"
        f"{indented}"
    )


def test_argocd_cm_is_generated_from_health_lua() -> None:
    if UPDATE:
        ARGOCD_CM.write_text(argocd_cm())
    assert ARGOCD_CM.read_text() == argocd_cm(), "regenerate with SIFT_UPDATE_GOLDEN=1"
    doc = yaml.safe_load(ARGOCD_CM.read_text())
    assert doc["data"]["resource.customizations.health.sift.dev_SelectionRun"] == (
        HEALTH.read_text()
    )
