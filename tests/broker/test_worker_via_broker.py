"""`sift-worker run` in cluster mode: every URL comes from the broker, the worker holds
no storage credential, and the artifacts land under <prefix><ns>/<name>/<uid>/."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokerkit import BrokerThread, ReviewingServer, run_worker_via_broker, s3_secret
from harness.server import Kube
from sift_operator.broker.tls import BrokerTLS
from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.capabilities import unsupported_features
from sift_worker.demo_data import generate_demo_dataset
from sift_worker.metric_names import WORKER_COUNTERS
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client, upload_tree

ROOT = Path(__file__).resolve().parents[2]
LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential")


def test_credentials_secret_is_accepted_only_with_a_broker() -> None:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["datasource"]["input"] = {"s3": {"bucket": "raw"}, "credentialsSecret": "creds"}
    run = SelectionRun.model_validate(doc)
    assert any("credentialsSecret" in p for p in unsupported_features(run, broker=False))
    assert not any("credentialsSecret" in p for p in unsupported_features(run, broker=True))


def test_worker_runs_through_the_broker_with_no_credential(
    broker: BrokerThread,
    tls: BrokerTLS,
    api: ReviewingServer,
    kube: Kube,
    moto: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    ns, name = "worker-ns", "demo"
    demo = generate_demo_dataset(
        tmp_path / "demo", clusters=3, per_cluster=4, duplicates=1, corrupt=1, size=(64, 48)
    )
    s3 = canary_s3_client(moto.endpoint)
    bucket = f"w-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, demo.root, "cams/")
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    loc = {"bucket": bucket, "endpoint": moto.endpoint, "region": "us-east-1"}
    doc["spec"]["datasource"] = {
        "input": {"s3": {**loc, "prefix": "cams/"}, "credentialsSecret": "s3-creds"},
        "output": {"s3": {**loc, "prefix": "sift/"}, "credentialsSecret": "s3-creds"},
    }
    doc["spec"]["selection"]["nSamples"] = 4
    doc["metadata"] = {"name": name, "namespace": ns}
    kube.create(s3_secret(ns))

    run = run_worker_via_broker(broker, tls, api, kube, doc, tmp_path, monkeypatch, capfd)

    # the worker held no credential: not in its environment or its manifest
    assert not any(CANARY_SECRET in t or CANARY_KEY_ID in t for t in run.worker_side)
    logs, uid, token = run.logs, run.uid, run.token
    # the worker's counters arrived with its progress (docs/observability.md)
    assert broker.server is not None
    assert set(broker.server.broker.worker_counters._seen[uid].values) == set(WORKER_COUNTERS)
    prefix = f"sift/{ns}/{name}/{uid}/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="sift/").get("Contents", [])
    keys = {o["Key"] for o in listed}
    assert all(k.startswith(prefix) for k in keys), keys
    for artifact in ("selection.csv", "embeddings.npy", "report.html", "run.json"):
        assert prefix + artifact in keys
    selection = s3.get_object(Bucket=bucket, Key=prefix + "selection.csv")["Body"].read()
    rows = selection.decode().strip().splitlines()[1:]
    assert sum(",true," in row for row in rows) == 4
    files = sum(len(v) for v in demo.clusters.values()) + len(demo.duplicates) + len(demo.corrupt)
    assert len(rows) == files  # every input object was listed through the broker
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert records[-1]["message"].startswith("done: selected 4 of")
    for leak in (*LEAKS, token):
        assert leak not in logs
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for leak in (*LEAKS, token):
            assert leak.encode() not in data, (key, leak)
