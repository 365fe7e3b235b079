"""Cluster mode beyond images: object crops with their side files (predictions and
metadata under the hidden default prefixes) and video frames, every URL signed by the
broker, give the same artifacts as the same data on a volume."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokerkit import BrokerThread, ReviewingServer, run_worker_via_broker, s3_secret
from harness.server import Kube
from media_data import make_objects_dataset, make_videos_dataset, media_manifest
from sift_operator.broker.tls import BrokerTLS
from sift_worker.cli import EXIT_OK, main
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client, upload_tree

LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential")
ARTIFACTS = ("selection.csv", "corrupt.csv", "input_problems.csv", "embeddings.npy")


@pytest.mark.parametrize("kind", ["objects", "videos"])
def test_media_and_side_files_through_the_broker_match_the_volume(
    kind: str,
    broker: BrokerThread,
    tls: BrokerTLS,
    api: ReviewingServer,
    kube: Kube,
    moto: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if kind == "objects":
        root = make_objects_dataset(tmp_path / "data")
        spec_input: dict[str, Any] = {
            "type": "objects",
            "predictions": {"task": "detection"},
            "metadata": {},
        }
    else:
        root = make_videos_dataset(tmp_path / "data")
        spec_input = {"type": "videos", "frames": {"everyNFrames": 4}}
    local = tmp_path / "local-out"
    vol = media_manifest(
        tmp_path,
        "vol",
        {"volume": {"path": str(root)}},
        {"volume": {"path": str(local)}},
        spec_input,
    )
    assert main(["run", str(vol)]) == EXIT_OK
    capfd.readouterr()

    ns, name = f"media-{kind}", "media"
    s3 = canary_s3_client(moto.endpoint)
    bucket = f"m-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    upload_tree(s3, bucket, root, "data/")
    loc = {"bucket": bucket, "endpoint": moto.endpoint, "region": "us-east-1"}
    doc: dict[str, Any] = yaml.safe_load(vol.read_text())
    doc["spec"]["datasource"] = {
        "input": {"s3": {**loc, "prefix": "data/"}, "credentialsSecret": "s3-creds"},
        "output": {"s3": {**loc, "prefix": "sift/"}, "credentialsSecret": "s3-creds"},
    }
    doc["metadata"] = {"name": name, "namespace": ns}
    kube.create(s3_secret(ns))

    run = run_worker_via_broker(broker, tls, api, kube, doc, tmp_path, monkeypatch, capfd)

    prefix = f"sift/{ns}/{name}/{run.uid}/"
    for artifact in ARTIFACTS:
        data = s3.get_object(Bucket=bucket, Key=prefix + artifact)["Body"].read()
        assert data == (local / artifact).read_bytes(), artifact
        for leak in LEAKS:
            assert leak.encode() not in data
    for leak in (*LEAKS, run.token):
        assert leak not in run.logs
    if kind == "objects":  # side files were really read through the broker's URLs
        problems = (local / "input_problems.csv").read_text()
        assert "predictions,missing for 2 of 8 samples" in problems
        assert "#object=" in (local / "selection.csv").read_text()
    else:
        assert "clip2.mp4#frame=000008" in (local / "selection.csv").read_text()
