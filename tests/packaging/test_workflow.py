"""The hosted-runner e2e workflow: parses, uses files that exist, sets chart values the
schema accepts, and applies a SelectionRun the API accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from sift_worker.api.v1alpha1 import SelectionRunSpec

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yaml"


def workflow() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return doc


def scripts() -> str:
    steps = workflow()["jobs"]["kind"]["steps"]
    return "\n".join(s.get("run", "") for s in steps)


def test_workflow_shape() -> None:
    doc = workflow()
    assert doc["name"] == "e2e"
    assert doc["permissions"] == {"contents": "read"}
    job = doc["jobs"]["kind"]
    assert job["runs-on"].startswith("ubuntu-")
    assert job["timeout-minutes"] <= 60
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", u) for u in uses), uses
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(s.get("if") == "failure()" for s in job["steps"]), "dump state on failure"


def test_referenced_files_exist() -> None:
    text = scripts()
    paths = set(re.findall(r"(?:-f|--file)\s+([\w./-]+\.(?:yaml|operator|worker))", text))
    paths |= set(re.findall(r"helm install \S+ (\./[\w/]+)", text))
    assert {"Dockerfile.operator", "Dockerfile.worker", "./helm/sift"} <= paths, paths
    for rel in paths:
        assert (ROOT / rel).exists(), f"the workflow uses {rel}, which does not exist"


def _set_values(text: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    env = workflow()["jobs"]["kind"]["env"]
    for key, raw in re.findall(r"--set ([\w.]+)=(\S+)", text):
        value = re.sub(r'"?\$(\w+)"?', lambda m: env[m.group(1)], raw)
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def test_chart_values_are_accepted_by_the_schema() -> None:
    values = _set_values(scripts())
    assert values["image"]["repository"] == "sift-operator"
    assert values["runDefaults"]["workerImage"] == "sift-worker:e2e"
    schema = json.loads((ROOT / "helm" / "sift" / "values.schema.json").read_text())
    jsonschema.validate(values, schema)


def test_e2e_manifests() -> None:
    run = yaml.safe_load((ROOT / "tests/packaging/e2e/selectionrun.yaml").read_text())
    spec = SelectionRunSpec.model_validate(run["spec"])
    assert spec.worker.resources.gpu == 0, "hosted runners have no GPU"
    assert spec.worker.image == workflow()["jobs"]["kind"]["env"]["WORKER_IMAGE"]
    claim = spec.datasource.input.volume
    assert claim is not None
    assert claim.claim_name == "sift-e2e-data"
    assert spec.report is None, "nothing leaves the kind cluster"
    seed = list(yaml.safe_load_all((ROOT / "tests/packaging/e2e/seed.yaml").read_text()))
    assert [d["kind"] for d in seed] == ["PersistentVolumeClaim", "Job"]
    assert seed[0]["metadata"]["name"] == claim.claim_name
    assert "wait --for=condition=Succeeded selectionrun/" + run["metadata"]["name"] in scripts()
