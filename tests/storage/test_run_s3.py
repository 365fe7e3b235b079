"""End to end: `sift-worker run` on S3 (moto) signs in-process, fetches through the guard,
uploads artifacts through signed PUTs, matches the folder run, and leaks no secret."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sift_worker.cli import EXIT_FAILED, EXIT_OK, main
from sift_worker.demo_data import DemoDataset, generate_demo_dataset
from sift_worker.fetch import Fetcher
from sift_worker.imaging import CorruptImage
from storage_servers import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    Server,
    canary_s3_client,
    set_canary_aws_env,
    upload_tree,
)

ROOT = Path(__file__).resolve().parents[2]
LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential", "Signature=")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("demo"),
        clusters=4,
        per_cluster=6,
        duplicates=2,
        corrupt=2,
        size=(96, 72),
    )


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_canary_aws_env(monkeypatch)


def _client(server: Server) -> Any:
    return canary_s3_client(server.endpoint)


def _upload(client: Any, bucket: str, prefix: str, root: Path) -> list[str]:
    client.create_bucket(Bucket=bucket)
    return upload_tree(client, bucket, root, prefix)


def _manifest(tmp_path: Path, inp: dict[str, Any], out: dict[str, Any], name: str) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["datasource"] = {"input": inp, "output": out}
    doc["spec"]["selection"]["nSamples"] = 5
    doc["spec"]["selection"]["removeDuplicates"] = {"maxDistance": 0.01}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_run_on_s3_writes_artifacts_matching_the_folder_run(
    moto_server: Server,
    demo: DemoDataset,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    client = _client(moto_server)
    inb, outb = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    _upload(client, inb, "cams/", demo.root)
    client.create_bucket(Bucket=outb)
    s3_in = {"s3": {"bucket": inb, "prefix": "cams/", "endpoint": moto_server.endpoint}}
    s3_out = {"s3": {"bucket": outb, "prefix": "sift/run1/", "endpoint": moto_server.endpoint}}

    assert main(["run", str(_manifest(tmp_path, s3_in, s3_out, "s3")), "--log-format", "json"]) == (
        EXIT_OK
    )
    logs = capfd.readouterr().err
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert records[-1]["message"].startswith("done: selected 5 of")
    assert f"open s3://{outb}/sift/run1/report.html" in records[-1]["message"]

    listed = client.list_objects_v2(Bucket=outb, Prefix="sift/run1/")
    keys = {o["Key"][len("sift/run1/") :] for o in listed.get("Contents", [])}
    for artifact in (
        "selection.csv",
        "corrupt.csv",
        "duplicates.csv",
        "embeddings.npy",
        "embeddings.txt",
        "report.html",
        "run.json",
    ):
        assert artifact in keys
    assert sum(k.startswith("thumbnails/") for k in keys) == 5
    assert not [
        o
        for o in client.list_objects_v2(Bucket=outb).get("Contents", [])
        if not o["Key"].startswith("sift/run1/")
    ]

    def body(key: str) -> bytes:
        data: bytes = client.get_object(Bucket=outb, Key="sift/run1/" + key)["Body"].read()
        return data

    # the same manifest on the local folder gives the same selection
    local_out = tmp_path / "local-out"
    vol = _manifest(
        tmp_path, {"volume": {"path": str(demo.root)}}, {"volume": {"path": str(local_out)}}, "v"
    )
    assert main(["run", str(vol)]) == EXIT_OK
    capfd.readouterr()
    assert body("selection.csv") == (local_out / "selection.csv").read_bytes()
    assert body("corrupt.csv") == (local_out / "corrupt.csv").read_bytes()
    assert body("embeddings.npy") == (local_out / "embeddings.npy").read_bytes()

    # canary: no credential and no signed URL in the logs or in any output object
    for leak in LEAKS:
        assert leak not in logs, leak
    assert "HTTP Request" not in logs  # httpx's per-request INFO lines are muted
    for key in keys:
        data = body(key)
        for leak in LEAKS:
            assert leak.encode() not in data, (key, leak)
    info = json.loads(body("run.json"))
    assert info["counts"]["selected"] == 5
    assert info["counts"]["corrupt"] == 2


def test_missing_bucket_and_empty_prefix_fail_naming_them(
    moto_server: Server, aws_env: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    client = _client(moto_server)
    bucket = f"empty-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="cams/readme.txt", Body=b"no images here")
    out = {"volume": {"path": str(tmp_path / "out")}}
    cases = [
        (
            "no-such-bucket-1",
            "cams/",
            "s3://no-such-bucket-1/cams/: bucket 'no-such-bucket-1' does",
        ),
        (bucket, "nothing/", f"s3://{bucket}/nothing/: no objects under this prefix"),
        (bucket, "cams/", f"s3://{bucket}/cams/: 1 objects under this prefix, none matched"),
    ]
    for name, prefix, expected in cases:
        inp = {"s3": {"bucket": name, "prefix": prefix, "endpoint": moto_server.endpoint}}
        assert main(["run", str(_manifest(tmp_path, inp, out, "m"))]) == EXIT_FAILED
        err = capfd.readouterr().err
        assert expected in err
        for leak in LEAKS:
            assert leak not in err
    assert not (tmp_path / "out" / "selection.csv").exists()  # nothing reported as complete


def test_an_object_that_vanishes_reads_as_corrupt(moto_server: Server, aws_env: None) -> None:
    from sift_worker.dataplane import RemoteInput
    from sift_worker.storage import RunSigner
    from sift_worker.storage.s3 import S3Storage

    client = _client(moto_server)
    bucket = f"gone-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/a.jpg", Body=b"x")
    signer = RunSigner(S3Storage(bucket, "in/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch)
        assert remote.list(frozenset({".jpg"}), None) == ["a.jpg"]
        client.delete_object(Bucket=bucket, Key="in/a.jpg")
        with pytest.raises(CorruptImage, match="vanished during the run"):
            remote.read_bytes("a.jpg")


def test_relevant_filenames_are_read_from_the_bucket(moto_server: Server, aws_env: None) -> None:
    from sift_worker.config import ConfigError, parse_manifest
    from sift_worker.dataplane import RemoteInput
    from sift_worker.run import _relevant
    from sift_worker.storage import RunSigner
    from sift_worker.storage.s3 import S3Storage

    client = _client(moto_server)
    bucket = f"rel-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/lists/keep.txt", Body=b"# keep\na.jpg\n./b/c.jpg\n")
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["datasource"]["relevantFilenames"] = "lists/keep.txt"
    run = parse_manifest(doc, "t")
    signer = RunSigner(S3Storage(bucket, "in/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch)
        assert _relevant(run, remote, "t") == {"a.jpg", "b/c.jpg"}
        doc["spec"]["datasource"]["relevantFilenames"] = "lists/missing.txt"
        with pytest.raises(ConfigError) as exc:
            _relevant(parse_manifest(doc, "t"), remote, "t")
    assert f"s3://{bucket}/in/lists/missing.txt: HTTP 404" in str(exc.value)
    assert "X-Amz" not in str(exc.value)
