"""ConfigMap (the worker's manifest), NetworkPolicy egress, names and settings."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from golden import CANARY, UID, as_stored, example, minimal_spec, run_with
from sift_operator.children import (
    InvalidRunError,
    api_host,
    build_config_map,
    build_network_policy,
    desired_children,
    storage_hosts,
)
from sift_operator.children.networkpolicy import normalize_cidrs
from sift_operator.names import child_name, fit, label_value
from sift_operator.settings import OperatorSettings, SettingsError
from sift_worker.config import parse_manifest
from test_children_golden import SETTINGS

# --- ConfigMap ---


def _manifest(run: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(build_config_map(run)["data"]["run.yaml"])
    return doc


def test_config_is_a_manifest_the_worker_accepts_with_the_same_spec() -> None:
    run = as_stored(example("full"))
    doc = _manifest(run)
    parsed = parse_manifest(doc, "configmap")
    assert parsed.spec == parse_manifest(example("full")).spec
    assert doc["metadata"] == {"name": "weekly-curation", "namespace": "ml-data", "uid": UID}
    assert "status" not in doc


def test_config_names_secrets_but_never_holds_values() -> None:
    run = as_stored(example("full"))
    run["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": CANARY,
        "note": f"Bearer {CANARY}",
    }
    run["status"] = {"result": {"selected": 1, "total": 2, "artifacts": f"s3://x/?sig={CANARY}"}}
    cm = build_config_map(run)
    text = yaml.safe_dump(cm)
    assert CANARY not in text
    doc = _manifest(run)
    assert doc["spec"]["datasource"]["input"]["credentialsSecret"] == "s3-reader"
    assert doc["spec"]["report"]["api"]["tokenSecret"] == {
        "name": "results-api-token",
        "key": "token",
    }
    assert set(cm["data"]) == {"run.yaml"}
    assert "binaryData" not in cm


@pytest.mark.parametrize(
    ("path", "input_path", "sub_path"),
    [
        ("frames", "/mnt/sift/input", "frames"),
        ("/frames/2026/", "/mnt/sift/input", "frames/2026"),
        ("../../etc", "/mnt/sift/input", "etc"),
        ("/", "/mnt/sift/input", None),
    ],
)
def test_claims_become_mounts_that_cannot_escape(
    path: str, input_path: str, sub_path: str | None
) -> None:
    spec = minimal_spec()
    spec["datasource"] = {
        "input": {"volume": {"claimName": "data", "path": path}},
        "output": {"volume": {"claimName": "results", "path": "../out"}},
    }
    run = run_with(spec)
    doc = _manifest(run)
    assert doc["spec"]["datasource"]["input"]["volume"] == {"path": input_path}
    assert doc["spec"]["datasource"]["output"]["volume"] == {"path": "/mnt/sift/output/out"}
    job = desired_children(run, SETTINGS, api_cidrs=[], suspend=False).job
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/sift/input"].get("subPath") == sub_path
    assert mounts["/mnt/sift/input"]["readOnly"] is True
    assert "readOnly" not in mounts["/mnt/sift/output"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": True, "results": False}


# --- NetworkPolicy ---


def _egress(run: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    policy = build_network_policy(run, SETTINGS, **kwargs)
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return rules


def _cidrs(rule: dict[str, Any]) -> list[str]:
    return [peer["ipBlock"]["cidr"] for peer in rule["to"]]


def test_policy_denies_ingress_and_selects_only_this_run() -> None:
    policy = build_network_policy(as_stored(example("full")), SETTINGS, api_cidrs=[])
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    assert spec["podSelector"] == {"matchLabels": {"sift.dev/run-uid": UID}}
    assert not any(
        peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0")
        for rule in spec["egress"]
        for peer in rule["to"]
    )


def test_dns_and_operator_rules() -> None:
    dns, broker, *_ = _egress(as_stored(example("full")), api_cidrs=[])
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert broker["to"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "sift-system"}
    }
    assert broker["to"][0]["podSelector"]["matchLabels"] == SETTINGS.operator_pod_labels
    assert broker["ports"] == [{"protocol": "TCP", "port": 8443}]


API_CASES = [
    # (pinned apiCIDRs, resolved, expected API rule CIDRs (None: no rule))
    ([], ["198.51.100.20"], ["198.51.100.20/32"]),
    (
        [],
        ["2001:db8::1", "198.51.100.20", "198.51.100.20"],
        ["198.51.100.20/32", "2001:db8::1/128"],
    ),
    (["203.0.113.0/24"], ["198.51.100.20"], ["203.0.113.0/24"]),
    ([], [], None),
]


@pytest.mark.parametrize(("pinned", "resolved", "expected"), API_CASES)
def test_api_egress_pinned_wins_over_resolved(
    pinned: list[str], resolved: list[str], expected: list[str] | None
) -> None:
    doc = example("full")
    doc["spec"]["egress"]["apiCIDRs"] = pinned
    doc["spec"]["egress"]["storageCIDRs"] = []
    rules = _egress(as_stored(doc), api_cidrs=resolved)
    if expected is None:
        assert len(rules) == 2
    else:
        assert len(rules) == 3
        assert _cidrs(rules[2]) == expected
        assert rules[2]["ports"] == [{"protocol": "TCP", "port": 443}]


def test_no_report_means_no_api_egress_at_all() -> None:
    run = run_with(minimal_spec())
    assert api_host(run, SETTINGS) is None
    assert len(_egress(run, api_cidrs=["198.51.100.20"])) == 2


def test_storage_cidrs_from_spec_and_resolved_with_endpoint_ports() -> None:
    spec = minimal_spec()
    spec["datasource"]["input"]["s3"]["endpoint"] = "https://minio.example.com:9000"
    spec["egress"] = {"storageCIDRs": ["52.219.0.0/16"]}
    rules = _egress(run_with(spec), api_cidrs=[], storage_cidrs=["192.0.2.9"])
    assert _cidrs(rules[-1]) == ["52.219.0.0/16", "192.0.2.9/32"]
    assert rules[-1]["ports"] == [
        {"protocol": "TCP", "port": 443},
        {"protocol": "TCP", "port": 9000},
    ]


def test_hosts_for_resolution() -> None:
    run = as_stored(example("full"))
    assert api_host(run, SETTINGS) == "api.lightly.ai"
    assert storage_hosts(run) == [
        "curation.s3.amazonaws.com",
        "models.s3.amazonaws.com",
        "raw-frames.s3.eu-central-1.amazonaws.com",
        "s3.amazonaws.com",
        "s3.eu-central-1.amazonaws.com",
    ]


def test_normalize_cidrs() -> None:
    assert normalize_cidrs(["10.0.0.1", "10.0.0.0/8", " 10.0.0.1 ", "", "::1"]) == [
        "10.0.0.0/8",
        "10.0.0.1/32",
        "::1/128",
    ]


def test_invalid_run_is_refused_with_field_names_and_no_values() -> None:
    run = run_with(minimal_spec())
    run["spec"]["selection"]["nSamples"] = CANARY
    with pytest.raises(InvalidRunError) as err:
        desired_children(run, SETTINGS, api_cidrs=[], suspend=False)
    assert any(p.startswith("spec.selection.nSamples") for p in err.value.problems)
    no_uid = run_with(minimal_spec())
    del no_uid["metadata"]["uid"]
    with pytest.raises(InvalidRunError, match=r"metadata\.uid is missing"):
        desired_children(no_uid, SETTINGS, api_cidrs=[], suspend=False)


# --- names ---

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

NAMES = [
    ("nightly", "sift-nightly"),
    ("a" * 58, "sift-" + "a" * 58),
    ("a" * 59, None),
    ("a" * 253, None),
    ("weekly.curation", None),
    ("x" * 60 + ".y", None),
]


@pytest.mark.parametrize(("run_name", "expected"), NAMES, ids=[n[:20] for n, _ in NAMES])
def test_child_names_fit_and_are_labels(run_name: str, expected: str | None) -> None:
    name = child_name(run_name)
    assert len(name) <= 63
    assert DNS_LABEL.match(name), name
    assert child_name(run_name) == name
    if expected is not None:
        assert name == expected
    else:
        assert name.startswith("sift-")
        assert re.search(r"-[0-9a-f]{10}$", name)
    value = label_value(run_name)
    assert len(value) <= 63
    assert LABEL_VALUE.match(value)


def test_long_names_do_not_collide() -> None:
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    assert child_name(a) != child_name(b)
    assert label_value(a) != label_value(b)
    assert child_name("a.b") != child_name("a-b")
    assert fit("short") == "short"


# --- settings ---


def test_settings_defaults() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.broker_port == 8443
    assert settings.max_running_runs is None
    assert settings.config_error_exit_code == 3
    assert settings.token_audience == "sift.dev/broker"


ENV_CASES: list[tuple[dict[str, str], dict[str, Any]]] = [
    ({"SIFT_WORKER_IMAGE": "r/w:1"}, {"worker_image": "r/w:1"}),
    ({"SIFT_MAX_RUNNING_RUNS": "4"}, {"max_running_runs": 4}),
    ({"SIFT_MAX_RUNNING_RUNS": ""}, {"max_running_runs": None}),
    (
        {"SIFT_BROKER_PORT": "9443", "SIFT_NAMESPACE": "ops"},
        {"broker_port": 9443, "namespace": "ops"},
    ),
    ({"SIFT_OPERATOR_POD_LABELS": '{"app": "sift"}'}, {"operator_pod_labels": {"app": "sift"}}),
    ({"SIFT_IMAGE_PULL_SECRETS": '["a", "b"]'}, {"image_pull_secrets": ("a", "b")}),
    ({"SIFT_TOKEN_EXPIRATION_SECONDS": "600"}, {"token_expiration_seconds": 600}),
    ({"UNRELATED": "x", "SIFT": "y"}, {}),
]


@pytest.mark.parametrize(("env", "expected"), ENV_CASES)
def test_settings_from_env(env: dict[str, str], expected: dict[str, Any]) -> None:
    settings = OperatorSettings.from_env(env)
    for key, value in expected.items():
        assert getattr(settings, key) == value


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SIFT_BROKER_PORT": "http"}, "SIFT_BROKER_PORT"),
        ({"SIFT_TOKEN_EXPIRATION_SECONDS": "60"}, "SIFT_TOKEN_EXPIRATION_SECONDS"),
        ({"SIFT_OPERATOR_POD_LABELS": "{app: sift"}, "SIFT_OPERATOR_POD_LABELS"),
        ({"SIFT_MAX_RUNNING_RUNS": "0"}, "SIFT_MAX_RUNNING_RUNS"),
        ({"SIFT_IMAGE_PULL_POLICY": "Sometimes"}, "SIFT_IMAGE_PULL_POLICY"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        OperatorSettings.from_env(env)
