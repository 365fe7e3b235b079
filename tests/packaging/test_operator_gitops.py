"""What Argo CD relies on: the operator never writes a run's ``spec``, children never
carry Argo CD's tracking labels/annotations, and every child has a controller
ownerReference to its run (so it shows under the run in the Application tree and is
garbage-collected with it rather than pruned by Argo CD)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from sift_operator.children import desired_children
from sift_operator.children.reportjob import build_report_job
from sift_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator" / "sift_operator"
SETTINGS = OperatorSettings(worker_image="registry.example.com/sift-worker:0.1.0")
TRACKING_LABELS = {"app.kubernetes.io/instance": "ml-pipelines"}
TRACKING_ANNOTATIONS = {
    "argocd.argoproj.io/tracking-id": "ml-pipelines:sift.dev/SelectionRun:ml-data/weekly",
    "argocd.argoproj.io/sync-wave": "-42",
    "argocd.argoproj.io/sync-options": "Prune=false",
    "kubectl.kubernetes.io/last-applied-configuration": '{"canary": "argo-applied"}',
}
ARGO_KEYS = (
    "argocd.argoproj.io/",
    "app.kubernetes.io/instance",
    "kubectl.kubernetes.io/last-applied-configuration",
)


def tracked_run() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "full.yaml").read_text())
    meta = doc["metadata"]
    meta.update(uid="0b1c2d3e-0000-4000-8000-000000000001", generation=1)
    meta.setdefault("namespace", "ml-data")
    meta.setdefault("labels", {}).update(TRACKING_LABELS)
    meta.setdefault("annotations", {}).update(TRACKING_ANNOTATIONS)
    return doc


def children() -> list[dict[str, Any]]:
    run = tracked_run()
    built = desired_children(run, SETTINGS, api_cidrs=["10.0.0.1/32"], suspend=False).all()
    return [*built, build_report_job(run, SETTINGS, deadline_seconds=600)]


def _metadata_maps(obj: Any) -> list[dict[str, str]]:
    """Every labels/annotations map in ``obj``, including pod templates."""
    found: list[dict[str, str]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("labels", "annotations") and isinstance(value, dict):
                found.append(value)
            else:
                found.extend(_metadata_maps(value))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_metadata_maps(item))
    return found


@pytest.mark.parametrize("child", children(), ids=lambda c: c["kind"])
def test_children_never_carry_argo_cd_tracking(child: dict[str, Any]) -> None:
    maps = _metadata_maps(child)
    assert maps, "a child without labels could not be found by the operator"
    leaked = [k for m in maps for k in m if k.startswith(ARGO_KEYS)]
    assert not leaked, f"{child['kind']} carries {leaked}"
    values = {v for m in maps for v in m.values()}
    assert not values & {*TRACKING_LABELS.values(), *TRACKING_ANNOTATIONS.values()}


@pytest.mark.parametrize("child", children(), ids=lambda c: c["kind"])
def test_children_have_a_controller_owner_reference(child: dict[str, Any]) -> None:
    refs = child["metadata"].get("ownerReferences") or []
    controllers = [r for r in refs if r.get("controller")]
    assert len(controllers) == 1, child["metadata"]
    ref = controllers[0]
    assert ref["kind"] == "SelectionRun"
    assert ref["apiVersion"] == "sift.dev/v1alpha1"
    assert ref["uid"] == tracked_run()["metadata"]["uid"]
    assert ref["blockOwnerDeletion"] is True
    assert child["metadata"]["namespace"] == "ml-data"  # owners are namespaced


def _patch_calls() -> list[tuple[Path, ast.Call]]:
    calls = []
    for path in OPERATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("merge_patch", "json_patch")
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self")
            ):
                calls.append((path, node))
    return calls


def test_the_operator_writes_only_status_of_its_runs() -> None:
    """Every PATCH the operator sends: a run's ``/status`` subresource with a body under
    ``status``, a Job's ``spec.suspend``, or an Event's count. Nothing else; and no PUT."""
    calls = _patch_calls()
    assert len(calls) >= 3, "the scan found no patches: did the client API change?"
    for path, call in calls:
        where = f"{path.relative_to(ROOT)}:{call.lineno}"
        target = ast.unparse(call.args[0])
        body = call.args[1]
        assert isinstance(body, ast.Dict), f"{where}: patch body must be a literal dict"
        keys = {k.value for k in body.keys if isinstance(k, ast.Constant)}
        sub = (
            call.args[2].value
            if len(call.args) > 2 and isinstance(call.args[2], ast.Constant)
            else None
        )
        if sub == "status":
            assert keys == {"status"}, f"{where}: a /status patch writes only status"
        elif target == "job":
            assert keys == {"spec"}, where
            inner = body.values[0]
            assert isinstance(inner, ast.Dict), where
            assert [ast.literal_eval(k) for k in inner.keys if k] == ["suspend"], where
        else:
            assert target == "ref", f"{where}: patches {target}"  # an Event
            assert "spec" not in keys, where
    for path in OPERATOR.rglob("*.py"):
        text = path.read_text()
        assert '"PUT"' not in text, f"{path.relative_to(ROOT)}: the operator never replaces"


GOLDEN = ROOT / "tests" / "helm" / "golden"  # the rendered chart, drift-tested by tests/helm


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_chart_rbac_cannot_write_a_run_spec(golden: Path) -> None:
    """The API server itself refuses a spec write: the operator's Roles allow only reads
    of selectionruns and patch of selectionruns/status (tests/helm/test_helm_rbac.py
    shows the real operator needs no more)."""
    roles = [
        d
        for d in yaml.safe_load_all(golden.read_text())
        if d and d.get("kind") in ("Role", "ClusterRole")
    ]
    rules = [
        (res, set(rule["verbs"]))
        for role in roles
        for rule in role.get("rules") or ()
        if "sift.dev" in rule.get("apiGroups", ()) or "*" in rule.get("apiGroups", ())
        for res in rule.get("resources", ())
    ]
    assert ("selectionruns/status", {"patch"}) in rules, golden.name
    for resource, verbs in rules:
        assert resource != "*", golden.name
        if resource == "selectionruns":
            assert verbs <= {"get", "list", "watch"}, f"{golden.name}: selectionruns {verbs}"
        elif resource == "selectionruns/status":
            assert verbs <= {"get", "patch"}, f"{golden.name}: status {verbs}"
