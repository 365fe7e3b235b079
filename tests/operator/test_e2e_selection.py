"""End to end, no cluster: ``kubectl apply`` of the demo manifest -> the operator's Job
-> a test "node" runs the real worker on a volume of demo images -> Succeeded, with the
selection written to the output volume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.cluster import Cluster, condition
from harness.node import Node
from sift_worker.demo_data import generate_demo_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
N_SAMPLES = 4
_OVER = ("Succeeded", "Failed")


def _demo_run(namespace: str, name: str) -> dict[str, Any]:
    """examples/demo.yaml, pointed at a PersistentVolumeClaim, small and CPU-only."""
    run: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    run["metadata"] = {"name": name, "namespace": namespace}
    spec = run["spec"]
    spec["datasource"]["input"]["volume"] = {"claimName": "demo", "path": "demo-data"}
    spec["datasource"]["output"]["volume"] = {"claimName": "demo", "path": f"{name}-out"}
    spec["selection"]["nSamples"] = N_SAMPLES
    spec["worker"] = {"resources": {"gpu": 0, "cpu": "2", "memory": "2Gi"}}
    return run


@pytest.fixture(scope="module")
def node(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Node:
    root = tmp_path_factory.mktemp("node")
    with Node(cluster.kube, root) as n:
        generate_demo_dataset(
            n.pvc("demo") / "demo-data",
            clusters=3,
            per_cluster=4,
            duplicates=1,
            corrupt=1,
            size=(48, 40),
        )
        yield n
    assert n.error is None, n.error


def test_demo_manifest_runs_to_success_with_real_selection(
    cluster: Cluster, node: Node, ns: str
) -> None:
    cluster.kube.create(_demo_run(ns, "demo"))
    run = cluster.wait_run(
        ns, "demo", lambda r: r.get("status", {}).get("phase") in _OVER, "finished", 120
    )
    assert node.outcomes == {"sift-demo": 0}, node.logs
    assert run["status"]["phase"] == "Succeeded"
    assert condition(run, "Succeeded")["reason"] == "JobComplete"
    assert run["status"]["startTime"] <= run["status"]["completionTime"]

    out = node.pvc("demo") / "demo-out"
    with (out / "selection.csv").open() as f:
        rows = list(csv.DictReader(f))
    selected = [r for r in rows if r["selected"].lower() in ("true", "1")]
    assert len(selected) == N_SAMPLES
    # 12 good images and one byte copy were read; the corrupt file is listed, not selected
    assert len(rows) >= 12
    assert all(not r["filename"].startswith("broken/") for r in selected)
    assert (out / "report.html").exists()
    reasons = cluster.reasons(ns, "demo")
    assert {"JobCreated", "Started", "Succeeded"} <= set(reasons)


def test_worker_config_error_fails_the_run_fast(cluster: Cluster, node: Node, ns: str) -> None:
    run = _demo_run(ns, "train")
    run["spec"]["input"]["embeddings"] = {"train": {"epochs": 1}}  # the worker refuses it
    cluster.kube.create(run)
    run = cluster.wait_phase(ns, "train", "Failed", timeout=60)
    assert node.outcomes.get("sift-train") == 3, node.logs.get("sift-train")
    assert condition(run, "Failed")["reason"] == "ConfigError"
