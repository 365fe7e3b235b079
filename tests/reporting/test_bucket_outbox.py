"""Reporting from an S3 output (moto on 127.0.0.1): the outbox lives in the bucket.

`sift-worker run` builds and sends the outbox from its staging folder and uploads
``report/``; with the API down the report stays Pending in the bucket, and
`sift-worker report FILE` resumes from there: every chunk reaches the receiver once.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sift_worker.cli import EXIT_OK, main
from sift_worker.demo_data import DemoDataset, generate_demo_dataset
from sift_worker.reporting import outbox as outbox_module
from sift_worker.reporting.receiver import Fault, ReceiverThread

from .conftest import CANARY_TOKEN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from storage_servers import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    Server,
    canary_s3_client,
    free_port,
    moto_process,
    set_canary_aws_env,
    upload_tree,
)

ROOT = Path(__file__).resolve().parents[2]
UID = "bucket-run-uid-1"
LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential", "Signature=")
RUN_ARGS = ["--no-progress-bars", "--threads", "1", "--decode-workers", "1"]


@pytest.fixture(scope="module")
def moto() -> Iterator[Server]:
    with moto_process() as server:
        yield server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo"), clusters=3, per_cluster=4, duplicates=0, corrupt=1
    )


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_canary_aws_env(monkeypatch)
    monkeypatch.setenv("SIFT_RESULTS_TOKEN", CANARY_TOKEN)
    monkeypatch.setenv("SIFT_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("SIFT_REPORT_RETRY_BUDGET", "0.5")
    monkeypatch.setattr(outbox_module, "MAX_SAMPLES_PER_CHUNK", 4)  # several chunks


def _buckets(moto: Server, demo: DemoDataset) -> tuple[Any, str, str]:
    client = canary_s3_client(moto.endpoint)
    inb, outb = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=inb)
    client.create_bucket(Bucket=outb)
    upload_tree(client, inb, demo.root, "cams/")
    return client, inb, outb


def _manifest(tmp_path: Path, moto: Server, inb: str, outb: str, url: str) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["metadata"]["uid"] = UID
    doc["spec"]["datasource"] = {
        "input": {"s3": {"bucket": inb, "prefix": "cams/", "endpoint": moto.endpoint}},
        "output": {"s3": {"bucket": outb, "prefix": "results/", "endpoint": moto.endpoint}},
    }
    doc["spec"]["selection"]["nSamples"] = 4
    doc["spec"]["report"] = {
        "api": {"url": url, "tokenSecret": {"name": "t", "key": "token"}},
        "share": {"filenames": "hashed", "embeddings": True},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _report_objects(client: Any, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix="results/report/").get("Contents", [])
    return {
        o["Key"].removeprefix("results/report/"): client.get_object(Bucket=bucket, Key=o["Key"])[
            "Body"
        ].read()
        for o in listed
    }


def _chunk_puts(receiver: ReceiverThread) -> Counter[str]:
    return Counter(
        r["path"]
        for r in receiver.store.requests()
        if r["method"] == "PUT" and "/chunks/" in r["path"] and r["status"] < 300
    )


def _assert_every_chunk_once(receiver: ReceiverThread, chunks: int) -> None:
    assert chunks > 1
    assert receiver.store.completed(UID)
    assert receiver.store.chunk_indices(UID) == list(range(chunks))
    puts = _chunk_puts(receiver)
    assert sorted(puts) == sorted(f"/v1/runs/{UID}/chunks/{i}" for i in range(chunks))
    assert set(puts.values()) == {1}, puts


def _assert_no_leak(receiver: ReceiverThread, *texts: str) -> None:
    got = "\n".join(
        p.read_bytes().decode("latin-1") for p in receiver.store.root.rglob("*") if p.is_file()
    )
    assert got  # the receiver stored something to check
    for leak in (*LEAKS, CANARY_TOKEN):
        assert leak not in got
        for text in texts:
            assert leak not in text


def test_run_on_s3_reports_and_keeps_the_outbox_in_the_bucket(
    moto: Server,
    demo: DemoDataset,
    env: None,
    tmp_path: Path,
    receiver: ReceiverThread,
    capfd: pytest.CaptureFixture[str],
) -> None:
    client, inb, outb = _buckets(moto, demo)
    path = _manifest(tmp_path, moto, inb, outb, receiver.url)
    assert main(["run", str(path), *RUN_ARGS]) == EXIT_OK
    out, err = capfd.readouterr()
    assert "reporting: done" in out, err[-2000:]
    report = _report_objects(client, outb)
    manifest = json.loads(report["outbox.json"])
    assert json.loads(report["state.json"])["completed"] is True
    assert {f"chunk-{i:06d}.json" for i in range(manifest["chunks"])} <= set(report)
    _assert_every_chunk_once(receiver, manifest["chunks"])
    salts = client.list_objects_v2(Bucket=outb, Prefix="results/.sift/").get("KeyCount", 0)
    assert salts == 1  # the filename salt is kept in the output bucket
    _assert_no_leak(receiver, out, err, *(b.decode("latin-1") for b in report.values()))


def test_pending_report_resumes_from_the_bucket(
    moto: Server,
    demo: DemoDataset,
    env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    client, inb, outb = _buckets(moto, demo)
    port = free_port()
    path = _manifest(tmp_path, moto, inb, outb, f"http://127.0.0.1:{port}")
    assert main(["run", str(path), *RUN_ARGS]) == EXIT_OK  # the API is down: still a success
    out, err = capfd.readouterr()
    assert f"s3://{outb}/results/report/" in out
    report = _report_objects(client, outb)
    state = json.loads(report["state.json"])
    assert state["reported"] == "Pending"
    assert not state["acked"]
    assert json.loads((tmp_path / "termination-log").read_text())["reported"] == "Pending"
    chunks = json.loads(report["outbox.json"])["chunks"]

    receiver = ReceiverThread(tmp_path / "store", CANARY_TOKEN, port=port).start()
    try:
        assert main(["report", str(path)]) == EXIT_OK
        out2, err2 = capfd.readouterr()
        assert f"reporting: Reported ({chunks} of {chunks} chunks acknowledged)" in out2
        _assert_every_chunk_once(receiver, chunks)
        after = _report_objects(client, outb)
        assert json.loads(after["state.json"])["completed"] is True
        assert after["outbox.json"] == report["outbox.json"]  # the same outbox, not rebuilt
        # the ack record in the bucket says done: a second `report` sends nothing
        before = len(receiver.store.requests())
        assert main(["report", str(path)]) == EXIT_OK
        assert len(receiver.store.requests()) == before
        _assert_no_leak(receiver, out, err, out2, err2, capfd.readouterr().err)
    finally:
        receiver.stop()


def test_partly_sent_report_resumes_from_the_acks_in_the_bucket(
    moto: Server,
    demo: DemoDataset,
    env: None,
    tmp_path: Path,
    receiver: ReceiverThread,
) -> None:
    client, inb, outb = _buckets(moto, demo)
    path = _manifest(tmp_path, moto, inb, outb, receiver.url)
    receiver.faults.add(Fault("PUT", rf"/v1/runs/{UID}/chunks/1", times=10_000, status=503))
    assert main(["run", str(path), *RUN_ARGS]) == EXIT_OK
    state = json.loads(_report_objects(client, outb)["state.json"])
    assert state["reported"] == "Pending"
    assert state["acked"] == [0]
    receiver.faults.clear()
    assert main(["report", str(path)]) == EXIT_OK
    chunks = json.loads(_report_objects(client, outb)["outbox.json"])["chunks"]
    _assert_every_chunk_once(receiver, chunks)  # chunk 0 was not sent again


@pytest.mark.parametrize("output", ["volume", "s3"])
def test_metadata_of_a_bucket_input_is_shared_from_its_staged_side_files(
    moto: Server,
    demo: DemoDataset,
    env: None,
    tmp_path: Path,
    receiver: ReceiverThread,
    capfd: pytest.CaptureFixture[str],
    output: str,
) -> None:
    """``share.metadata`` with an S3 input: the side files the run staged are read for
    the report (allowlisted keys only), whether the output is a volume or a bucket."""
    client, inb, outb = _buckets(moto, demo)
    names = sorted(
        p.relative_to(demo.root).as_posix() for p in demo.root.rglob("*.jpg") if p.is_file()
    )
    weather = {name: ["sunny", "rain"][i % 2] for i, name in enumerate(names)}
    for name, value in weather.items():
        key = "cams/.sift/metadata/" + name.rsplit(".", 1)[0] + ".json"
        body = json.dumps({"weather": value, "owner": CANARY_SECRET})  # owner: not shared
        client.put_object(Bucket=inb, Key=key, Body=body.encode())
    path = _manifest(tmp_path, moto, inb, outb, receiver.url)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["input"]["metadata"] = {}
    doc["spec"]["report"]["share"] = {"filenames": "plain", "metadata": ["weather"]}
    if output == "volume":
        doc["spec"]["datasource"]["output"] = {"volume": {"path": str(tmp_path / "out")}}
    path.write_text(yaml.safe_dump(doc))
    assert main(["run", str(path), *RUN_ARGS]) == EXIT_OK
    out, err = capfd.readouterr()
    assert "reporting: done" in out, err[-2000:]
    shared: dict[str, Any] = {}
    for index in receiver.store.chunk_indices(UID):
        chunk = receiver.store.chunk(UID, index)
        assert chunk is not None
        for sample in chunk.samples:
            if sample.filename is not None and sample.metadata:
                shared[sample.filename] = sample.metadata
    readable = {n: {"weather": w} for n, w in weather.items() if n in shared}
    assert shared == readable
    assert len(shared) >= len(names) - 1  # every sample but the corrupt one
    _assert_no_leak(receiver, out, err)
