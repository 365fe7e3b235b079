"""The chart renders, lints and validates with Helm 3 and Helm 4; bad values are refused
naming the field; the rendered operator is configured the way the operator reads it."""

from __future__ import annotations

import argparse
import os
import tarfile
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart import CHART, GOLDEN, NAMESPACE, VALUE_SETS, Helm, Obj, documents, of_kind, only
from sift_operator import cli
from sift_operator.settings import OperatorSettings
from tools import HELM_PACKAGES

K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "ClusterKopfPeering", "KopfPeering"}


def test_the_pinned_helm_versions_run(helm: Helm) -> None:
    out = helm.run("version", "--short").stdout
    assert out.startswith(HELM_PACKAGES[helm.major][2]), out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_passes(helm: Helm, name: str, tmp_path: Any) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    out = helm.run("lint", "--strict", str(CHART), "-f", str(values))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_pass_kubernetes_validate_strict(helm: Helm, name: str) -> None:
    objs = helm.render(VALUE_SETS[name], include_crds=True)
    unknown = set()
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    # only custom resources have no official schema (their CRDs validated above)
    assert unknown <= CUSTOM_KINDS, unknown
    assert {"CustomResourceDefinition", "Deployment"} <= {o["kind"] for o in objs}


def test_helm_3_and_helm_4_render_the_same(helm4: Helm, helm: Helm) -> None:
    for name, values in VALUE_SETS.items():
        assert helm.template(values).stdout == helm4.template(values).stdout, name


BAD_VALUES = [
    ({"replicas": 0}, "replicas"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"operator": {"logFormt": "json"}}, "logFormt"),
    ({"operator": {"maxRunningRuns": 0}}, "maxRunningRuns"),
    ({"broker": {"port": 70000}}, "port"),
    ({"networkPolicy": {"kubeAPI": {"cidrs": ["api.example.com"]}}}, "cidrs"),
    ({"runDefaults": {"imagePullPolicy": "Sometimes"}}, "imagePullPolicy"),
    ({"runDefaults": {"egress": {"storageCIDRs": ["s3.example.com"]}}}, "storageCIDRs"),
    ({"runDefaults": {"gpuResourceName": ""}}, "gpuResourceName"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"operator": {"extraEnv": [{"name": "PATH", "value": "/x"}]}}, "extraEnv"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_bad_values_fail_naming_the_field(helm: Helm, values: dict[str, Any], field: str) -> None:
    proc = helm.template(values, check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert field in proc.stderr, proc.stderr


# --- golden snapshots ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_golden_snapshot(helm4: Helm, name: str) -> None:
    """Regenerate: ``SIFT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/helm`` (review the diff)."""
    rendered = helm4.template(VALUE_SETS[name]).stdout
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("SIFT_UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.exists(), f"no golden file {path}: run with SIFT_UPDATE_GOLDEN=1"
    assert rendered == path.read_text(), (
        f"{path.name} drifted: SIFT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/helm, review the diff"
    )


# --- the operator Deployment ----------------------------------------------------------


def _deployment(objs: list[Obj]) -> Obj:
    return only(objs, "Deployment")


def _container(objs: list[Obj]) -> Obj:
    (container,) = _deployment(objs)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _sift_env(objs: list[Obj]) -> dict[str, str]:
    env = _container(objs)["env"]
    return {e["name"]: e["value"] for e in env if e["name"].startswith("SIFT_")}


@pytest.fixture(scope="module")
def rendered(helm4: Helm) -> dict[str, list[Obj]]:
    return {name: helm4.render(values) for name, values in VALUE_SETS.items()}


def test_pod_security_restricted(rendered: dict[str, list[Obj]]) -> None:
    for name, objs in rendered.items():
        pod = _deployment(objs)["spec"]["template"]["spec"]
        sc, csc = pod["securityContext"], _container(objs)["securityContext"]
        assert sc["runAsNonRoot"] is True, name
        assert sc["runAsUser"] == 65532, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert csc["allowPrivilegeEscalation"] is False, name
        assert csc["readOnlyRootFilesystem"] is True, name
        assert csc["capabilities"] == {"drop": ["ALL"]}, name
        assert csc["runAsNonRoot"] is True, name
        assert isinstance(csc["runAsUser"], int), name
        assert not pod.get("hostNetwork"), name
        assert not pod.get("hostPID"), name
        assert all("hostPath" not in v for v in pod["volumes"]), name
        assert _deployment(objs)["spec"]["strategy"] == {"type": "Recreate"}, name
        probes = {p: _container(objs)[p]["httpGet"] for p in ("livenessProbe", "readinessProbe")}
        assert all(p == {"path": "/healthz", "port": "healthz"} for p in probes.values())


def _parse_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli._add_run_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(args)


def test_the_operator_cli_accepts_the_rendered_args(rendered: dict[str, list[Obj]]) -> None:
    for name, objs in rendered.items():
        container = _container(objs)
        args = _parse_args(container["args"])
        values = VALUE_SETS[name]
        assert args.namespace == values.get("watchNamespaces", []), name
        ha = values.get("replicas", 1) > 1
        assert args.standalone is not ha, name
        assert (args.peering is not None) is ha, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert args.metrics_port == ports["metrics"], name
        assert args.liveness == f"http://0.0.0.0:{ports['healthz']}/healthz", name


def test_the_rendered_env_is_valid_operator_settings(rendered: dict[str, list[Obj]]) -> None:
    for name, objs in rendered.items():
        settings = OperatorSettings.from_env(_sift_env(objs))
        service = only(objs, "Service")
        assert settings.namespace == NAMESPACE
        assert settings.service_name == service["metadata"]["name"], name
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        assert settings.broker_port == ports["broker"], name
        pod_labels = _deployment(objs)["spec"]["template"]["metadata"]["labels"]
        # the workers' NetworkPolicy reaches the broker through these labels
        assert settings.operator_pod_labels.items() <= pod_labels.items(), name
        assert pod_labels["app.kubernetes.io/name"] == "sift"
        assert pod_labels["app.kubernetes.io/component"] == "operator"
        assert service["spec"]["selector"] == settings.operator_pod_labels
    env = _sift_env(rendered["ha-monitors"])
    assert OperatorSettings.from_env(env).max_running_runs == 4
    assert OperatorSettings.from_env(env).broker_tls_secret == "sift-broker-cert"
    assert OperatorSettings.from_env(_sift_env(rendered["default"])).max_running_runs is None


# Settings the chart leaves at the operator's default, and why (a new setting must be
# exposed in values.yaml or listed here).
NOT_IN_VALUES = {
    "broker_listen_address": "the pod's own interface; 0.0.0.0 in a pod is right",
    "broker_public_url": "for brokers outside the cluster; extraEnv can set it",
    "broker_body_limit_bytes": "a safety bound, not a knob; extraEnv can set it",
    "broker_request_timeout_seconds": "a safety bound, not a knob; extraEnv can set it",
    "broker_progress_interval_seconds": "status write rate; extraEnv can set it",
    "broker_tls_cert_file": "files need a mount; the chart uses broker.tls.secretName",
    "broker_tls_key_file": "files need a mount; the chart uses broker.tls.secretName",
    "broker_tls_ca_file": "files need a mount; the chart uses broker.tls.secretName",
    "broker_ca_pem": "set by the operator itself at startup (the broker's CA)",
}


def test_every_operator_setting_is_set_by_the_chart_or_listed(
    rendered: dict[str, list[Obj]],
) -> None:
    set_by_chart = {k.removeprefix("SIFT_").lower() for k in _sift_env(rendered["ha-monitors"])}
    fields = set(OperatorSettings.model_fields)
    assert set_by_chart <= fields, f"the chart sets unknown settings: {set_by_chart - fields}"
    missing = fields - set_by_chart - set(NOT_IN_VALUES)
    assert not missing, f"settings neither in values.yaml nor in NOT_IN_VALUES: {missing}"
    assert not set(NOT_IN_VALUES) - fields, "stale NOT_IN_VALUES entries"


def test_pdb_and_peering_only_with_replicas(rendered: dict[str, list[Obj]]) -> None:
    assert not list(of_kind(rendered["default"], "PodDisruptionBudget"))
    assert not list(of_kind(rendered["default"], "ClusterKopfPeering"))
    ha = rendered["ha-monitors"]
    assert only(ha, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    peering = only(ha, "ClusterKopfPeering")["metadata"]["name"]
    assert f"--peering={peering}" in _container(ha)["args"]


def test_monitors_scrape_the_metrics_port(rendered: dict[str, list[Obj]]) -> None:
    ha = rendered["ha-monitors"]
    service_ports = {p["name"] for p in only(ha, "Service")["spec"]["ports"]}
    (endpoint,) = only(ha, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["port"] in service_ports
    (pod_endpoint,) = only(ha, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["port"] in {p["name"] for p in _container(ha)["ports"]}
    assert not list(of_kind(rendered["default"], "ServiceMonitor"))


def test_the_operator_network_policy(rendered: dict[str, list[Obj]]) -> None:
    for name, objs in rendered.items():
        policy = only(objs, "NetworkPolicy")["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        assert (
            policy["podSelector"]["matchLabels"]
            == (_deployment(objs)["spec"]["selector"]["matchLabels"])
        )
        broker, metrics = policy["ingress"]
        (peer,) = broker["from"]
        assert peer["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "sift",
            "app.kubernetes.io/component": "worker",
        }
        watched = VALUE_SETS[name].get("watchNamespaces")
        if watched:
            (expr,) = peer["namespaceSelector"]["matchExpressions"]
            assert expr["values"] == watched
        else:
            assert peer["namespaceSelector"] == {}
        assert broker["ports"] == [{"port": 8443, "protocol": "TCP"}]
        assert metrics == {"ports": [{"port": 9090, "protocol": "TCP"}]}  # from anywhere
        dns = policy["egress"][0]
        assert {p["port"] for p in dns["ports"]} == {53}


def test_no_wildcards_and_no_privilege_verbs(rendered: dict[str, list[Obj]]) -> None:
    for name, objs in rendered.items():
        for role in [*of_kind(objs, "ClusterRole"), *of_kind(objs, "Role")]:
            for rule in role["rules"]:
                for key in ("verbs", "resources", "apiGroups"):
                    assert "*" not in rule[key], (name, role["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate", "delete"} & set(rule["verbs"])


def test_watch_namespaces_get_roles_not_a_cluster_role(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["watch-namespaces"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in of_kind(objs, "Role")}
    assert {("team-a", "sift"), ("team-b", "sift")} <= roles
    bindings = {
        (b["metadata"]["namespace"], b["roleRef"]["name"]) for b in of_kind(objs, "RoleBinding")
    }
    assert roles == bindings
    # the only cluster-wide grant is the broker's TokenReview
    (cluster_role,) = of_kind(objs, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        }
    ]


def test_crds_folder_holds_the_generated_crd_and_kopf_peering() -> None:
    crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert crds == ["kopf-peering.yaml", "selectionrun.yaml"]
    kopf = documents((CHART / "crds" / "kopf-peering.yaml").read_text())
    names = [d["metadata"]["name"] for d in kopf]
    assert names == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    # selectionrun.yaml == `sift-operator crd`: tests/test_api.py (the drift test)


def test_helm_package_holds_the_crds_schema_and_notes(helm4: Helm, tmp_path: Any) -> None:
    helm4.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("sift-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for member in ("crds/selectionrun.yaml", "values.schema.json", "templates/NOTES.txt"):
        assert f"sift/{member}" in names, member
