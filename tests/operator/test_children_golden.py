"""Every child of a set of representative runs, against golden YAML and the real schemas."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from golden import CANARY, UID, as_stored, assert_golden, example, goldens, minimal_spec, run_with
from sift_operator.children import Children, desired_children
from sift_operator.names import child_name
from sift_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(worker_image="registry.example.com/sift-worker:0.1.0")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # oldest supported, newest schema here


def _full() -> dict[str, Any]:
    return as_stored(example("full"))


def _minimal() -> dict[str, Any]:
    return run_with(minimal_spec())


def _cilium() -> dict[str, Any]:
    spec = minimal_spec()
    spec["datasource"] = {
        "input": {"gcs": {"bucket": "raw-frames", "prefix": "cams/"}},
        "output": {"azure": {"account": "curation", "container": "sift", "prefix": "out/"}},
    }
    spec["input"]["embeddings"]["weights"] = {
        "s3": {"bucket": "models", "key": "resnet18.safetensors"}
    }
    spec["report"] = {"api": {"tokenSecret": {"name": "results-api-token", "key": "token"}}}
    spec["egress"] = {"mode": "cilium", "apiCIDRs": ["203.0.113.7/32"]}
    return run_with(spec, name="cilium-run")


def _pvc() -> dict[str, Any]:
    spec = minimal_spec()
    spec["datasource"] = {
        "input": {"volume": {"claimName": "datasets", "path": "frames/2026"}},
        "output": {"volume": {"claimName": "datasets", "path": "/sift-out"}},
    }
    spec["worker"] = {"resources": {"gpu": 0, "cpu": "500m", "memory": "2Gi"}}
    return run_with(spec, name="cpu-run")


def _scheduling() -> dict[str, Any]:
    spec = minimal_spec()
    spec["datasource"]["input"]["s3"]["endpoint"] = "https://minio.storage.example.com:9000"
    spec["datasource"]["output"]["s3"]["region"] = "eu-west-1"
    spec["worker"] = {
        "resources": {"gpu": 2, "gpuResourceName": "amd.com/gpu", "cpu": "16", "memory": "64Gi"},
        "nodeSelector": {"node.kubernetes.io/instance-type": "mi300x"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "topology.kubernetes.io/zone",
                                    "operator": "In",
                                    "values": ["eu-west-1a"],
                                }
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "batch-low",
        "activeDeadlineSeconds": 7200,
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": 3600,
    }
    spec["egress"] = {"storageCIDRs": ["198.51.100.0/24"]}
    return run_with(spec, name="scheduled")


def _long_name() -> dict[str, Any]:
    return run_with(minimal_spec(), name="a" * 120 + ".weekly." + "b" * 120)


CASES: dict[str, tuple[Callable[[], dict[str, Any]], dict[str, Any]]] = {
    "full": (_full, {"api_cidrs": ["198.51.100.20", "2001:db8::1"], "suspend": True}),
    "minimal": (_minimal, {"api_cidrs": [], "suspend": False}),
    "cilium": (_cilium, {"api_cidrs": ["192.0.2.1"], "suspend": False}),
    "pvc": (_pvc, {"api_cidrs": [], "suspend": False}),
    "scheduling": (
        _scheduling,
        {"api_cidrs": [], "storage_cidrs": ["192.0.2.0/28"], "suspend": True},
    ),
    "long-name": (_long_name, {"api_cidrs": [], "suspend": False}),
}


def render(case: str) -> Children:
    make, kwargs = CASES[case]
    return desired_children(make(), SETTINGS, **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden(case: str) -> None:
    assert_golden(f"children-{case}", render(case).all())


def test_no_stale_golden_files() -> None:
    assert goldens("children-") == {f"children-{c}" for c in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_children_valid_against_kubernetes_schemas(case: str, version: str) -> None:
    """Strict: an unknown or misspelled field is an error, as with kubectl --validate=strict."""
    for obj in render(case).all():
        if obj["kind"] == "CiliumNetworkPolicy":
            continue  # a CRD; checked structurally below
        kubernetes_validate.validate(obj, version, strict=True)


def test_schema_check_catches_a_misspelled_field() -> None:
    job = copy.deepcopy(render("minimal").job)
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_child_is_owned_labelled_and_named(case: str) -> None:
    make, _ = CASES[case]
    run = make()
    children = render(case).all()
    kinds = [c["kind"] for c in children]
    assert kinds[:3] == ["ServiceAccount", "ConfigMap", "NetworkPolicy"]
    assert kinds[-1] == "Job"
    for child in children:
        meta = child["metadata"]
        assert meta["name"] == child_name(run["metadata"]["name"])
        assert len(meta["name"]) <= 63
        assert meta["namespace"] == run["metadata"]["namespace"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "sift.dev/v1alpha1",
                "kind": "SelectionRun",
                "name": run["metadata"]["name"],
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["sift.dev/run-uid"] == UID
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "sift-operator"
        assert all(len(v) <= 63 for v in meta["labels"].values())


def test_rendering_is_deterministic() -> None:
    for case in CASES:
        assert render(case) == render(case)


def test_parent_labels_and_annotations_are_never_copied() -> None:
    """Argo CD tracking (label or annotation), kubectl's last-applied copy (which holds
    the whole manifest), and any other metadata of the parent stay on the parent."""
    run = _full()
    run["metadata"]["labels"] = {
        "app.kubernetes.io/instance": "argo-app",
        "argocd.argoproj.io/instance": "argo-app",
        "team": CANARY,
    }
    run["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "argo-app:sift.dev/SelectionRun:ml-data/x",
        "argocd.argoproj.io/sync-options": "Prune=false",
        "kubectl.kubernetes.io/last-applied-configuration": '{"token": "' + CANARY + '"}',
    }
    run["status"] = {"conditions": [{"type": "Reported", "message": CANARY}]}
    children = desired_children(run, SETTINGS, api_cidrs=[], suspend=False)
    text = str(children.all())
    assert CANARY not in text
    assert "argocd" not in text
    assert "argo-app" not in text
    for child in children.all():
        assert "app.kubernetes.io/instance" not in child["metadata"]["labels"]


def test_cilium_policy_shape() -> None:
    cnp = render("cilium").cilium_policy
    assert cnp is not None
    assert cnp["apiVersion"] == "cilium.io/v2"
    assert cnp["spec"]["endpointSelector"] == {"matchLabels": {"sift.dev/run-uid": UID}}
    rules = cnp["spec"]["egress"]
    dns = rules[0]
    assert dns["toEndpoints"][0]["matchLabels"] == {
        "k8s:io.kubernetes.pod.namespace": "kube-system",
        "k8s:k8s-app": "kube-dns",
    }
    assert dns["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}
    fqdns = {m["matchName"] for r in rules for m in r.get("toFQDNs", [])}
    assert fqdns == {
        "api.lightly.ai",
        "storage.googleapis.com",
        "curation.blob.core.windows.net",
        "s3.amazonaws.com",
        "models.s3.amazonaws.com",
    }
    for rule in rules:
        for port in rule["toPorts"][0]["ports"]:
            assert isinstance(port["port"], str)  # Cilium wants strings
    assert render("full").cilium_policy is None
