"""The SelectionRun models, the generated CRD and local validation agree."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_schema import api_server_errors, api_server_update_errors
from sift_operator.crd import build_crd, openapi_schema, render_crd_yaml
from sift_operator.reference import render_reference
from sift_worker.api.rules import transition_errors
from sift_worker.api.v1alpha1 import SelectionRunSpec
from sift_worker.config import ConfigError, load_manifest, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def full_example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "full.yaml").read_text())
    return doc


def test_checked_in_crd_matches_models() -> None:
    assert (ROOT / "crds" / "selectionrun.yaml").read_text() == render_crd_yaml(), (
        "crds/selectionrun.yaml drifted: run `sift-operator crd > crds/selectionrun.yaml`"
    )


def test_checked_in_reference_matches_models() -> None:
    assert (ROOT / "docs" / "reference" / "selectionrun.md").read_text() == render_reference(), (
        "docs/reference/selectionrun.md drifted: "
        "run `sift-operator reference > docs/reference/selectionrun.md`"
    )


def test_crd_identity() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "selectionruns.sift.dev"
    assert names["shortNames"] == ["sr"]
    assert names["categories"] == ["sift"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Selected"] == ".status.result.selected"
    assert columns["Age"] == ".metadata.creationTimestamp"


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from _walk(child, f"{path}.{key}")
        if "items" in node:
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_bounded() -> None:
    schema = openapi_schema()
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title:", "const:"):
        assert forbidden not in text
    for path, node in _walk(schema):
        if path in (".metadata",):
            continue
        assert "type" in node, f"{path} has no type"
        if node["type"] == "string" and "enum" not in node and path not in (".apiVersion", ".kind"):
            assert "maxLength" in node, f"{path}: unbounded string makes CEL cost estimates explode"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if node["type"] == "object" and path not in ("", ".spec.worker.affinity"):
            assert "properties" in node or "additionalProperties" in node, path


def test_cel_rules_on_expected_objects() -> None:
    schema = openapi_schema()
    selection = schema["properties"]["spec"]["properties"]["selection"]
    messages = [v["message"] for v in selection["x-kubernetes-validations"]]
    assert "exactly one of nSamples, proportion must be set" in messages
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_accepted_by_models_and_api_server(example: Path) -> None:
    load_manifest(example)
    assert api_server_errors(openapi_schema(), yaml.safe_load(example.read_text())) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()

# (mutation path, new value, text the local error must contain)
BAD_SPECS = [
    ("spec.selection.proportion", 0.1, "spec.selection: exactly one of nSamples, proportion"),
    ("spec.selection.nSamples", _DELETE, "spec.selection: exactly one of nSamples, proportion"),
    (
        "spec.selection.nSamples",
        0,
        "spec.selection.nSamples: Input should be greater than or equal to 1",
    ),
    (
        "spec.input",
        {"type": "objects", "embeddings": {"model": "tiny"}},
        "spec.input: type objects needs predictions with task detection",
    ),
    (
        "spec.input.frames",
        {"everyNFrames": 10},
        "spec.input: frames applies only to type videos",
    ),
    (
        "spec.selection.strategies.0.strategy.type",
        "magic",
        "spec.selection.strategies[0].strategy.type",
    ),
    (
        "spec.selection.strategies.0.input.type",
        "metadata",
        "spec.selection.strategies[0].input: type metadata needs key",
    ),
    (
        "spec.selection.strategies.3.strategy.max",
        _DELETE,
        "spec.selection.strategies[3].strategy: type threshold needs one of min, max, in",
    ),
    (
        "spec.selection.strategies.0.strategy.seed",
        3,
        "spec.selection.strategies[0].strategy: seed applies only to type random",
    ),
    (
        "spec.selection.strategies.0.strategy.minDistance",
        3.5,
        "spec.selection.strategies[0].strategy.minDistance",
    ),
    (
        "spec.selection.strategies.2.strategy.distribution",
        "uniform",
        "at most one of target, distribution",
    ),
    (
        "spec.datasource.input.gcs",
        {"bucket": "abc"},
        "spec.datasource.input: exactly one of s3, gcs, azure, volume",
    ),
    ("spec.datasource.input.s3.bucket", "UPPER_case", "spec.datasource.input.s3.bucket"),
    (
        "spec.datasource.output.volume",
        {"path": "/out"},
        "spec.datasource.output: exactly one of s3, gcs, azure, volume",
    ),
    (
        "spec.input.embeddings.file",
        {"path": "e.npy"},
        "spec.input.embeddings: exactly one of model, file, train",
    ),
    ("spec.input.embeddings.model", "alexnet", "spec.input.embeddings.model"),
    (
        "spec.input.embeddings.model",
        _DELETE,
        "spec.input.embeddings: exactly one of model, file, train",
    ),
    ("spec.input.type", "audio", "spec.input.type"),
    ("spec.input.embeddings.batchSize", 0, "spec.input.embeddings.batchSize"),
    ("spec.report.api.url", "http://evil.example.com", "spec.report.api.url"),
    ("spec.report.api.url", "https://user:pw@api.lightly.ai", "spec.report.api.url"),
    (
        "spec.datasource.input.s3.endpoint",
        "https://key:secret@minio.example.com",
        "spec.datasource.input.s3.endpoint",
    ),
    ("spec.report.share.filenames", "encrypted", "spec.report.share.filenames"),
    ("spec.worker.resources.gpu", -1, "spec.worker.resources.gpu"),
    ("spec.worker.resources.memory", "lots", "spec.worker.resources.memory"),
    ("spec.worker.queueName", "Not_A_Label", "spec.worker.queueName"),
    ("spec.egress.mode", "iptables", "spec.egress.mode"),
    ("spec.egress.storageCIDRs", ["10.0.0.0/99"], "spec.egress.storageCIDRs[0]"),
    (
        "spec.selection.unknownField",
        1,
        "spec.selection.unknownField: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), BAD_SPECS, ids=[b[0] + "=" + repr(b[1])[:20] for b in BAD_SPECS]
)
def test_bad_spec_refused_locally_and_by_api_server(path: str, value: Any, expected: str) -> None:
    doc = full_example()
    _set(doc, path, value if value is _DELETE else copy.deepcopy(value))
    with pytest.raises(ConfigError) as err:
        parse_manifest(doc, "test.yaml")
    assert any(expected in p for p in err.value.problems), err.value.problems
    if (
        path != "spec.egress.storageCIDRs"
    ):  # /99 passes the regex; the API server's own CIDR check is Python-only here
        assert api_server_errors(openapi_schema(), doc), f"API server would accept {path}={value!r}"


def test_cli_refuses_invalid_file_before_any_work(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    doc = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["selection"]["proportion"] = 0.5
    doc["spec"]["datasource"]["output"]["volume"]["path"] = str(tmp_path / "out")
    manifest.write_text(yaml.safe_dump(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "sift_worker.cli", "run", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 3
    assert "spec.selection: exactly one of nSamples, proportion must be set" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("spec:\n  selection: [\n")
    with pytest.raises(ConfigError) as err:
        load_manifest(manifest)
    assert "line 3" in err.value.problems[0]


def test_chart_crd_is_the_generated_one() -> None:
    assert (ROOT / "helm" / "sift" / "crds" / "selectionrun.yaml").read_text() == render_crd_yaml()


def test_packaged_demo_manifest_is_the_example() -> None:
    packaged = ROOT / "worker" / "sift_worker" / "demo.yaml"
    assert packaged.read_text() == (ROOT / "examples" / "demo.yaml").read_text()


def test_operator_and_models_import_without_torch() -> None:
    """The operator image has no torch: its import graph must not reach for it."""
    code = (
        "import sys, sift_operator.cli, sift_operator.crd, sift_worker.api, sift_worker.config;"
        "heavy = {'torch', 'numpy', 'PIL'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# (mutation path, new value, the API server's message or None when the update is allowed)
UPDATES = [
    ("spec.datasource.input.s3.prefix", "cams/2026-12/", "spec.datasource is immutable"),
    ("spec.datasource.output.credentialsSecret", "other", "spec.datasource is immutable"),
    ("spec.input.embeddings.model", "resnet50", "spec.input is immutable"),
    ("spec.input.embeddings.batchSize", 32, "spec.input is immutable"),
    ("spec.selection.nSamples", 2000, "spec.selection is immutable"),
    ("spec.selection.strategies.0.strategy.minDistance", 0.1, "spec.selection is immutable"),
    ("spec.worker.queueName", "other-queue", "spec.worker.queueName is immutable"),
    ("spec.worker.queueName", _DELETE, "spec.worker.queueName is immutable"),
    ("spec.suspend", True, None),
    ("spec.worker.resources.cpu", "16", None),
    ("spec.worker.backoffLimit", 5, None),
    ("spec.worker.image", "registry.example.com/sift-worker:1.0.1", None),
    ("spec.egress.storageCIDRs", ["52.219.0.0/16", "3.5.0.0/16"], None),
    ("spec.report.share.embeddings", False, None),
    ("metadata.labels", {"team": "vision"}, None),
    ("status", {"phase": "Running"}, None),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), UPDATES, ids=[u[0] + "=" + repr(u[1])[:20] for u in UPDATES]
)
def test_update_of_immutable_field_refused_mutable_allowed(
    path: str, value: Any, expected: str | None
) -> None:
    old = full_example()
    new = full_example()
    _set(new, path, value if value is _DELETE else copy.deepcopy(value))
    errors = api_server_update_errors(openapi_schema(), old, new)
    python = transition_errors(
        SelectionRunSpec,
        parse_manifest(old).spec,
        parse_manifest({k: v for k, v in new.items() if k != "status"}).spec,
    )
    if expected is None:
        assert errors == [], errors
        assert python == []
    else:
        assert any(expected in e and e.startswith(".spec:") for e in errors), errors
        assert any(expected in p for p in python), python


def test_adding_a_queue_name_later_is_refused() -> None:
    old = full_example()
    del old["spec"]["worker"]["queueName"]
    new = full_example()
    assert api_server_errors(openapi_schema(), old) == []
    errors = api_server_update_errors(openapi_schema(), old, new)
    assert any("spec.worker.queueName is immutable" in e for e in errors), errors


def test_transition_rules_do_not_run_on_create() -> None:
    schema = openapi_schema()
    rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert sum("oldSelf" in r["rule"] for r in rules) == 4
    assert api_server_errors(schema, full_example()) == []
