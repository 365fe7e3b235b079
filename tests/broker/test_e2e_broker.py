"""End to end through the broker: a SelectionRun on S3 with a credentialsSecret, the real
operator process (kopf + broker), a test node running the real worker with a projected
token and no credential -> Succeeded, the selection in the output bucket, and the
report (hashed filenames: the salt is read back from the bucket through the broker)
at the project's receiver -> Reported=True."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokerkit import ReviewingServer, s3_secret
from harness.cluster import condition, free_port
from harness.node import Node
from harness.operator import OperatorProcess
from harness.server import Kube
from sift_worker.demo_data import generate_demo_dataset
from sift_worker.reporting.receiver import ReceiverThread
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client, upload_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RESULTS_TOKEN = "broker-e2e-results-token-CANARY-77c1"
LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential", RESULTS_TOKEN)


class TokenNode(Node):
    """The node plus the kubelet's projected ServiceAccount token, registered for review
    and bound to the pod the node creates for the Job (as the kubelet's token is)."""

    def __init__(self, kube: Kube, root: Path, api: ReviewingServer) -> None:
        super().__init__(kube, root, timeout=180)
        self.api = api
        self.tokens: list[str] = []
        self._unbound: list[tuple[str, str, tuple[str, ...]]] = []
        create_pod = self.ctl.create_pod

        def create_and_bind(job: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            pod = create_pod(job, **kwargs)
            for token, user, audiences in self._unbound:
                self.api.emulator.tokens[token] = (user, audiences, pod)
            self._unbound.clear()
            return pod

        self.ctl.create_pod = create_and_bind  # type: ignore[method-assign]

    def _mounts(self, job: dict[str, Any], workdir: Path) -> dict[str, Path]:
        mounts = super()._mounts(job, workdir)
        pod = job["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (container,) = pod["containers"]
        for mount in container.get("volumeMounts", []):
            for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
                sat = source.get("serviceAccountToken")
                if sat is None:
                    continue
                token = f"tok-{uuid.uuid4().hex}"
                user = f"system:serviceaccount:{job['metadata']['namespace']}:"
                user += pod["serviceAccountName"]
                self._unbound.append((token, user, (sat["audience"],)))  # bound at creation
                self.tokens.append(token)
                (mounts[mount["mountPath"]] / sat["path"]).write_text(token)
        return mounts


@pytest.fixture(scope="module")
def operator_cluster(
    api: ReviewingServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, int]]:
    tmp = tmp_path_factory.mktemp("op")
    port = free_port()
    proc = OperatorProcess(
        api.write_kubeconfig(tmp / "kubeconfig.yaml"),
        tmp / "operator.log",
        env={
            "SIFT_BROKER_PORT": str(port),
            "SIFT_BROKER_LISTEN_ADDRESS": "127.0.0.1",
            "SIFT_BROKER_PUBLIC_URL": f"https://127.0.0.1:{port}",
            "SIFT_BROKER_TLS_EXTRA_NAMES": '["127.0.0.1"]',
            "SIFT_BROKER_PROGRESS_INTERVAL_SECONDS": "0.5",
        },
        args=("--metrics-port", "0"),
    )
    try:
        proc.start()
        proc.wait_for_log("sift operator started", 30)
        yield proc, port
    finally:
        proc.stop()


def test_selection_run_on_s3_through_the_broker_succeeds_with_no_worker_credential(
    api: ReviewingServer,
    kube: Kube,
    moto: Server,
    operator_cluster: tuple[OperatorProcess, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator, _ = operator_cluster
    ns, name = "e2e-broker", "demo"
    demo = generate_demo_dataset(
        tmp_path / "demo", clusters=3, per_cluster=4, duplicates=1, corrupt=1, size=(48, 40)
    )
    s3 = canary_s3_client(moto.endpoint)
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, demo.root, "cams/")
    run: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    loc = {"bucket": bucket, "endpoint": moto.endpoint, "region": "us-east-1"}
    run["metadata"] = {"name": name, "namespace": ns}
    run["spec"]["datasource"] = {
        "input": {"s3": {**loc, "prefix": "cams/"}, "credentialsSecret": "s3-creds"},
        "output": {"s3": {**loc, "prefix": "sift/"}, "credentialsSecret": "s3-creds"},
    }
    run["spec"]["selection"]["nSamples"] = 4
    run["spec"]["worker"] = {"resources": {"gpu": 0, "cpu": "2", "memory": "2Gi"}}
    receiver = ReceiverThread(tmp_path / "received", RESULTS_TOKEN).start()
    run["spec"]["report"] = {  # share.filenames: hashed (the default)
        "api": {"url": receiver.url, "tokenSecret": {"name": "results-api", "key": "token"}}
    }
    kube.create(s3_secret(ns))
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "results-api", "namespace": ns},
            "data": {"token": base64.b64encode(RESULTS_TOKEN.encode()).decode()},
        }
    )
    # the node's environment holds no credential either (the test process has none)
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def finished_and_reported() -> dict[str, Any] | None:
        r = kube.get("selectionruns", ns, name)
        if not r or r.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            return None
        return r if condition(r, "Reported").get("reason") else None

    pod_reads = api.emulator.counts[("GET", "pods")]
    try:
        with TokenNode(kube, tmp_path / "node", api) as node:
            uid = kube.create(run)["metadata"]["uid"]
            done = kube.wait_for(finished_and_reported, "the run to finish", timeout=150)
    finally:
        receiver.stop()
    assert node.error is None, node.error
    # the broker found the token's pod in the operator's pod index: no pods GET (the
    # operator's list and watch of pods were counted before the run)
    assert api.emulator.counts[("GET", "pods")] == pod_reads
    logs = node.logs.get(f"sift-{name}", "")
    assert done["status"]["phase"] == "Succeeded", (
        done["status"],
        logs[-3000:],
        operator.logs()[-3000:],
    )
    assert condition(done, "Succeeded")["reason"] == "JobComplete"
    reported = condition(done, "Reported")
    assert (reported["status"], reported["reason"]) == ("True", "Reported"), reported
    chunks = receiver.store.chunk_indices(uid)
    assert chunks
    assert chunks == list(range(len(chunks)))
    assert receiver.store.completed(uid)
    # heartbeats went out while it worked, though the output is a bucket (the uid is the run's)
    beats = (receiver.store.run_dir(uid) / "heartbeats.jsonl").read_text().splitlines()
    assert {json.loads(b)["stage"] for b in beats} >= {"embedding"}, beats
    # the worker's progress reports reached the run's status through the broker
    progress = kube.wait_for(
        lambda: (kube.get("selectionruns", ns, name) or {}).get("status", {}).get("progress"),
        "status.progress",
        timeout=5,
    )
    assert progress["stage"]
    assert progress["done"] >= 1

    prefix = f"sift/{ns}/{name}/{uid}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="sift/").get("Contents", [])}
    assert all(k.startswith(prefix) for k in keys), keys
    for artifact in ("selection.csv", "embeddings.npy", "report.html", "run.json"):
        assert prefix + artifact in keys
    # the outbox and the filename salt (hashed ids) were kept in the user's bucket
    assert prefix + "report/state.json" in keys
    assert any(k.startswith(prefix + ".sift/filename-salt-") for k in keys), keys
    rows = s3.get_object(Bucket=bucket, Key=prefix + "selection.csv")["Body"].read().decode()
    assert sum(",true," in row for row in rows.splitlines()) == 4

    # the worker held no credential: not in its Job (env, volumes), ConfigMap or files
    job = kube.get("jobs", ns, f"sift-{name}")
    cm = kube.get("configmaps", ns, f"sift-{name}")
    assert job is not None
    assert cm is not None
    assert "broker-ca.crt" in cm["data"]
    worker_side = [json.dumps(job), json.dumps(cm)]
    worker_side += [
        p.read_text(errors="replace") for p in (tmp_path / "node").rglob("*") if p.is_file()
    ]
    for text in worker_side:
        for leak in (CANARY_SECRET, CANARY_KEY_ID):
            assert leak not in text
    secret_volumes = [v for v in job["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    # the results API token is the only Secret the worker sees; no storage credential
    assert [v["secret"]["secretName"] for v in secret_volumes] == ["results-api"]
    # no secret, token or signed URL in logs, status, events or ConfigMaps
    texts = [logs, operator.logs(), json.dumps(done), json.dumps(kube.list("events", ns))]
    texts.append(json.dumps(kube.list("configmaps", ns)))
    for text in texts:
        for leak in (*LEAKS, *node.tokens):
            assert leak not in text
