"""Object storage beyond whole images: object crops, video frames and side files
(metadata, predictions) read through signed URLs from moto S3 on 127.0.0.1 give the
very same artifacts as the same data on a volume, and leak no signed URL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_data import make_objects_dataset, make_videos_dataset, media_manifest
from sift_worker import dataplane
from sift_worker.cli import EXIT_OK, main
from sift_worker.dataplane import RemoteInput, TooLargeError
from sift_worker.fetch import Fetcher, ObjectGoneError
from sift_worker.imaging import CorruptImage
from sift_worker.storage import RunSigner
from sift_worker.storage.s3 import S3Storage
from storage_servers import (
    CANARY_KEY_ID,
    CANARY_SECRET,
    Server,
    canary_s3_client,
    set_canary_aws_env,
    upload_tree,
)

LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential", "Signature=")
ARTIFACTS = ("selection.csv", "corrupt.csv", "input_problems.csv", "embeddings.npy")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_canary_aws_env(monkeypatch)


@pytest.fixture(scope="module")
def objects_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_objects_dataset(tmp_path_factory.mktemp("objects"))


@pytest.fixture(scope="module")
def videos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_videos_dataset(tmp_path_factory.mktemp("videos"))


def _new_bucket(server: Server, tag: str) -> tuple[Any, str]:
    """A fresh bucket (a unique name per test) and a client for it."""
    client = canary_s3_client(server.endpoint)
    bucket = f"{tag}-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _compare_s3_with_volume(
    moto: Server,
    root: Path,
    tmp_path: Path,
    spec_input: dict[str, Any],
    capfd: pytest.CaptureFixture[str],
) -> dict[str, bytes]:
    client = canary_s3_client(moto.endpoint)
    inb, outb = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=inb)
    client.create_bucket(Bucket=outb)
    upload_tree(client, inb, root, "data/")
    s3_in = {"s3": {"bucket": inb, "prefix": "data/", "endpoint": moto.endpoint}}
    s3_out = {"s3": {"bucket": outb, "prefix": "run/", "endpoint": moto.endpoint}}
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
    remote = media_manifest(tmp_path, "s3", s3_in, s3_out, spec_input)
    assert main(["run", str(remote), "--log-format", "json"]) == EXIT_OK
    logs = capfd.readouterr().err
    got = {a: client.get_object(Bucket=outb, Key=f"run/{a}")["Body"].read() for a in ARTIFACTS}
    for artifact in ARTIFACTS:
        assert got[artifact] == (local / artifact).read_bytes(), artifact
    thumbs = client.list_objects_v2(Bucket=outb, Prefix="run/thumbnails/").get("Contents", [])
    assert len(thumbs) == len(list((local / "thumbnails").iterdir())) > 0
    for obj in thumbs:  # the same pictures, under the same names
        name = obj["Key"].rsplit("/", 1)[1]
        body = client.get_object(Bucket=outb, Key=obj["Key"])["Body"].read()
        assert body == (local / "thumbnails" / name).read_bytes(), name
    for leak in LEAKS:  # canary: no credential or signed URL in any log line or artifact
        assert leak not in logs, leak
        for data in got.values():
            assert leak.encode() not in data, leak
    return got


def test_objects_and_side_files_from_s3_match_the_volume(
    moto_server: Server,
    objects_root: Path,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    spec_input = {
        "type": "objects",
        "predictions": {"task": "detection"},
        "metadata": {},
        "objects": {"minSize": 4},
    }
    got = _compare_s3_with_volume(moto_server, objects_root, tmp_path, spec_input, capfd)
    selection = got["selection.csv"].decode()
    assert "cam0/img0.jpg#object=0" in selection  # crops are the samples
    problems = got["input_problems.csv"].decode()
    # the same problems as on the volume (compared byte for byte above), and they are real
    assert ".sift/predictions/cam0/img6.json" in problems
    assert "invalid JSON" in problems
    # img5 has no side files at all, img6 bad predictions, img3 no metadata file
    assert "predictions,missing for 2 of 8 samples" in problems
    assert "metadata:weather,missing for 2 of 8 samples" in problems


def test_predictions_without_schema_read_no_sidecar(
    moto_server: Server, aws_env: None, tmp_path: Path
) -> None:
    """Without a schema no per-sample file is read (as on a volume): no request either."""
    from sift_worker.api.v1alpha1 import InputSpec
    from sift_worker.inputs.staging import stage_side_files

    client, bucket = _new_bucket(moto_server, "side")
    client.put_object(Bucket=bucket, Key="in/.sift/predictions/a.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="in/m/metadata.jsonl", Body=b'{"filename": "a.jpg"}\n')
    client.put_object(Bucket=bucket, Key="in/m/a.json", Body=b"{}")
    spec = InputSpec.model_validate(
        {
            "type": "images",
            "embeddings": {"model": "tiny"},
            "predictions": {"task": "classification"},
            "metadata": {"prefix": "m/"},
        }
    )
    signer = RunSigner(S3Storage(bucket, "in/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging")
        folder, problems = stage_side_files(remote, spec, ["a.jpg", "b.jpg"], metadata=True)
    staged = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert staged == ["m/metadata.jsonl"]  # a table: per-sample metadata files are not read
    assert problems == []


def test_videos_from_s3_match_the_volume(
    moto_server: Server,
    videos_root: Path,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dataplane, "DOWNLOAD_CHUNK", 4096)  # several ranged GETs per video
    spec_input = {"type": "videos", "frames": {"everyNFrames": 3, "maxFramesPerVideo": 3}}
    got = _compare_s3_with_volume(moto_server, videos_root, tmp_path, spec_input, capfd)
    assert b"clip1.mp4#frame=000006" in got["selection.csv"]
    assert b"clip1.mp4#frame=000009" not in got["selection.csv"]  # maxFramesPerVideo
    assert b"broken.mp4" in got["corrupt.csv"]


def test_a_video_over_the_download_cap_is_corrupt(
    moto_server: Server,
    videos_root: Path,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = canary_s3_client(moto_server.endpoint)
    inb, outb = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=inb)
    client.create_bucket(Bucket=outb)
    sizes = {p.name: p.stat().st_size for p in videos_root.glob("clip*.mp4")}
    cap = sorted(sizes.values())[1]  # the largest clip is over it
    big = max(sizes, key=lambda n: sizes[n])
    for name in sizes:
        client.put_object(Bucket=inb, Key=f"v/{name}", Body=(videos_root / name).read_bytes())
    monkeypatch.setenv("SIFT_MAX_DOWNLOAD_BYTES", str(cap))
    s3_in = {"s3": {"bucket": inb, "prefix": "v/", "endpoint": moto_server.endpoint}}
    s3_out = {"s3": {"bucket": outb, "prefix": "run/", "endpoint": moto_server.endpoint}}
    path = media_manifest(tmp_path, "cap", s3_in, s3_out, {"type": "videos"})
    assert main(["run", str(path)]) == EXIT_OK
    capfd.readouterr()
    corrupt = client.get_object(Bucket=outb, Key="run/corrupt.csv")["Body"].read().decode()
    assert f"{big},too large to download: over {cap} bytes" in corrupt
    assert corrupt.count("\n") == 2  # the header and the big clip only


def test_download_is_ranged_bounded_and_names_the_object(
    moto_server: Server, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataplane, "DOWNLOAD_CHUNK", 1000)
    client, bucket = _new_bucket(moto_server, "dl")
    bodies = {"odd.bin": bytes(range(256)) * 11, "even.bin": b"e" * 3000, "empty.bin": b""}
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=f"in/{key}", Body=body)
    client.put_object(Bucket=bucket, Key="in/big.bin", Body=b"b" * 5000)
    signer = RunSigner(S3Storage(bucket, "in/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging", max_download=3200)
        for key, body in bodies.items():  # several chunks, an exact multiple, nothing
            dest = tmp_path / key
            assert remote.download(key, dest) == len(body)
            assert dest.read_bytes() == body
        with pytest.raises(TooLargeError, match=rf"s3://{bucket}/in/big.bin: .*over 3200 bytes"):
            remote.download("big.bin", tmp_path / "big")
        assert (tmp_path / "big").stat().st_size == 3201  # it stopped right after the cap
        with pytest.raises(ObjectGoneError, match=rf"s3://{bucket}/in/gone.bin: HTTP 404"):
            remote.download("gone.bin", tmp_path / "gone")
        assert not (tmp_path / "gone").exists()
        with pytest.raises(CorruptImage, match="too large to download: over 3200 bytes"):
            remote.temp_copy("big.bin")
        with pytest.raises(CorruptImage, match="vanished during the run"):
            remote.temp_copy("gone.bin")
        copy = remote.temp_copy("even.bin")
        assert copy.read_bytes() == bodies["even.bin"]
        assert copy.is_relative_to(remote.staging)
        copy.unlink()
        assert list((remote.staging / "media").iterdir()) == []  # failed copies left nothing


def test_remote_frames_equal_the_volume_frames_and_copies_are_deleted(
    moto_server: Server, videos_root: Path, aws_env: None, tmp_path: Path
) -> None:
    from sift_worker.sources.samples import SampleRef, iter_decoded_samples

    client, bucket = _new_bucket(moto_server, "fr")
    upload_tree(client, bucket, videos_root, "v/")
    items: list[str | SampleRef] = [
        "clip0.mp4",
        SampleRef.video_frame("clip1.mp4", 2),
        SampleRef.video_frame("clip1.mp4", 7),
        SampleRef.video_frame("clip2.mp4", 40),  # past the end: corrupt, as on a volume
        "broken.mp4",
    ]
    kw: dict[str, Any] = {"workers": 2, "window": 3, "every_n": 5, "max_frames": 2}
    local = list(iter_decoded_samples(videos_root, items, 32, **kw))
    signer = RunSigner(S3Storage(bucket, "v/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote_input = RemoteInput(signer, fetch, tmp_path / "staging")
        remote = list(iter_decoded_samples(remote_input, items, 32, **kw))
        assert list((remote_input.staging / "media").iterdir()) == []  # each copy deleted
    assert (
        [r.id for r, _ in remote]
        == [r.id for r, _ in local]
        == [
            "clip0.mp4#frame=000000",
            "clip0.mp4#frame=000005",
            "clip1.mp4#frame=000002",
            "clip1.mp4#frame=000007",
            "clip2.mp4#frame=000040",
            "broken.mp4",
        ]
    )
    for (_, a), (_, b) in zip(local, remote, strict=True):
        if isinstance(a, CorruptImage):
            assert isinstance(b, CorruptImage)
            assert a.reason == b.reason
        else:
            assert isinstance(b, np.ndarray)
            np.testing.assert_array_equal(a, b)


def _gcs_store(server: Server, objects: dict[str, bytes]) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth.credentials import AnonymousCredentials
    from sift_worker.storage.gcs import GCSStorage, service_account_credentials
    from test_storage_gcs import _bucket

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "sift-test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "sift@sift-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    }
    return GCSStorage(
        _bucket(server, objects),
        "in/",
        credentials=service_account_credentials(info, "test"),
        api_credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        endpoint=server.endpoint,
    )


def _azure_store(server: Server, objects: dict[str, bytes]) -> Any:
    from sift_worker.storage.azure import AzureStorage
    from storage_servers import AZURITE_ACCOUNT, AZURITE_KEY
    from test_storage_azure import _container

    return AzureStorage(
        AZURITE_ACCOUNT,
        _container(server, objects),
        "in/",
        account_key=AZURITE_KEY,
        endpoint=server.endpoint,
    )


@pytest.mark.parametrize("backend", ["gcs", "azure"])
def test_ranged_downloads_on_the_gcs_and_azure_emulators(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The emulators honour Range on signed GETs (a server ignoring it would be an error)."""
    monkeypatch.setattr(dataplane, "DOWNLOAD_CHUNK", 1000)
    bodies = {"odd.bin": bytes(range(256)) * 11, "even.bin": b"e" * 2000, "empty.bin": b""}
    objects = {f"in/{k}": v for k, v in bodies.items()}
    if backend == "gcs":
        store = _gcs_store(request.getfixturevalue("gcs_server"), objects)
    else:
        store = _azure_store(request.getfixturevalue("azurite"), objects)
    signer = RunSigner(store)
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging")
        for key, body in bodies.items():
            assert remote.download(key, tmp_path / key) == len(body), key
            assert (tmp_path / key).read_bytes() == body, key
        with pytest.raises(ObjectGoneError):
            remote.download("gone.bin", tmp_path / "gone")


def test_side_file_keys_that_cannot_be_object_keys_and_oversized_tables(
    moto_server: Server, aws_env: None, tmp_path: Path
) -> None:
    from sift_worker.api.v1alpha1 import InputSpec
    from sift_worker.inputs.staging import stage_side_files

    client, bucket = _new_bucket(moto_server, "keys")
    client.put_object(Bucket=bucket, Key="in/t/metadata.jsonl", Body=b"x" * 5000)

    def spec(prefix: str) -> InputSpec:
        return InputSpec.model_validate(
            {"embeddings": {"model": "tiny"}, "metadata": {"prefix": prefix}}
        )

    signer = RunSigner(S3Storage(bucket, "in/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging", max_download=4000)
        _, problems = stage_side_files(remote, spec("m//"), ["a.jpg"], metadata=True)
        assert [p.filename for p in problems] == [
            "m//metadata.parquet",
            "m//metadata.jsonl",
            "m//a.json",
        ]
        assert all("not a usable object key" in p.reason for p in problems)
        with pytest.raises(TooLargeError, match=rf"s3://{bucket}/in/t/metadata.jsonl: .*4000"):
            stage_side_files(remote, spec("t/"), ["a.jpg"], metadata=True)
        assert not list((remote.side_dir / "t").iterdir())  # no partial table left


def test_a_download_signs_once_unless_its_url_nears_expiry(
    moto_server: Server, aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    monkeypatch.setattr(dataplane, "DOWNLOAD_CHUNK", 1000)
    client, bucket = _new_bucket(moto_server, "sig")
    client.put_object(Bucket=bucket, Key="in/v.mp4", Body=b"v" * 4500)  # five chunks
    for lifetime, signings in ((None, 1), (timedelta(seconds=30), 5)):
        signer = RunSigner(
            S3Storage(bucket, "in/", endpoint=moto_server.endpoint), lifetime=lifetime
        )
        calls: list[int] = []

        def counted(keys: Any, sign: Any = signer.sign_inputs, calls: list[int] = calls) -> Any:
            calls.append(1)
            return sign(keys)

        monkeypatch.setattr(signer, "sign_inputs", counted)
        with Fetcher(signer.allowed_hosts()) as fetch:
            remote = RemoteInput(signer, fetch, tmp_path / "staging")
            assert remote.download("v.mp4", tmp_path / "v.mp4") == 4500
        assert len(calls) == signings, lifetime


def test_an_image_is_fetched_once_for_all_its_objects(
    moto_server: Server,
    objects_root: Path,
    aws_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sift_worker.sources.objects import object_refs
    from sift_worker.sources.samples import SampleRef, iter_decoded_samples

    client, bucket = _new_bucket(moto_server, "crop")
    upload_tree(client, bucket, objects_root, "d/")
    boxes = [(2, 3, 30, 25), (40, 20, 30, 30), (70, 50, 30, 30), (500, 500, 9, 9)]
    refs: list[str | SampleRef] = [
        *object_refs("cam0/img0.jpg", boxes),
        *object_refs("cam1/img1.jpg", boxes[:2]),
        *object_refs("cam0/gone.jpg", boxes[:2]),  # not in the bucket: every box says so
    ]
    kw: dict[str, Any] = {"workers": 2, "window": 4}
    signer = RunSigner(S3Storage(bucket, "d/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging")
        reads: list[str] = []
        read = remote.read_bytes
        monkeypatch.setattr(remote, "read_bytes", lambda name: reads.append(name) or read(name))
        got = list(iter_decoded_samples(remote, refs, 32, **kw))
    assert sorted(reads) == ["cam0/gone.jpg", "cam0/img0.jpg", "cam1/img1.jpg"]
    # the same crops as from the folder (the box outside the image corrupt in both)
    present = [r for r in refs if not isinstance(r, str) and r.file != "cam0/gone.jpg"]
    local = list(iter_decoded_samples(objects_root, present, 32, **kw))
    assert [r.id for r, _ in got[: len(local)]] == [r.id for r, _ in local]
    for (_, a), (_, b) in zip(local, got, strict=False):
        if isinstance(a, CorruptImage):
            assert isinstance(b, CorruptImage)
            assert a.reason == b.reason
        else:
            assert isinstance(b, np.ndarray)
            np.testing.assert_array_equal(a, b)
    gone = [b for r, b in got if r.file == "cam0/gone.jpg"]
    assert len(gone) == 2
    for item in gone:
        assert isinstance(item, CorruptImage)
        assert item.reason == "object vanished during the run (HTTP 404)"
    assert sum(isinstance(b, CorruptImage) for _, b in got) == 3


def test_thumbnails_fetch_each_file_once(
    moto_server: Server,
    videos_root: Path,
    objects_root: Path,
    aws_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sift_worker.run import _thumbnails
    from sift_worker.sources.samples import SampleRef

    client, bucket = _new_bucket(moto_server, "th")
    upload_tree(client, bucket, videos_root, "d/")
    upload_tree(client, bucket, objects_root, "d/")
    picks = list(
        enumerate(
            [
                SampleRef.video_frame("clip0.mp4", 3),
                SampleRef.object("cam0/img0.jpg", 0, (2, 3, 30, 25)),
                SampleRef.video_frame("clip1.mp4", 0),
                SampleRef.video_frame("clip0.mp4", 9),
                SampleRef.object("cam0/img0.jpg", 1, (40, 20, 30, 30)),
                SampleRef.video_frame("clip0.mp4", 99),  # past the end: no thumbnail
                SampleRef.image("cam1/img1.jpg"),
            ],
            1,
        )
    )
    root = tmp_path / "both"
    root.mkdir()
    for src in (videos_root, objects_root):
        for path in src.rglob("*"):
            if path.is_file():
                (root / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                (root / path.relative_to(src)).write_bytes(path.read_bytes())
    local = _thumbnails(root, picks, 2)
    signer = RunSigner(S3Storage(bucket, "d/", endpoint=moto_server.endpoint))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(signer, fetch, tmp_path / "staging")
        fetched: list[str] = []
        copy, read = remote.temp_copy, remote.read_bytes
        monkeypatch.setattr(remote, "temp_copy", lambda n: fetched.append(n) or copy(n))
        monkeypatch.setattr(remote, "read_bytes", lambda n: fetched.append(n) or read(n))
        got = _thumbnails(remote, picks, 2)
        assert list((remote.staging / "media").iterdir()) == []
    assert sorted(fetched) == ["cam0/img0.jpg", "cam1/img1.jpg", "clip0.mp4", "clip1.mp4"]
    assert [(t.rank, t.filename, t.jpeg) for t in got] == [
        (t.rank, t.filename, t.jpeg) for t in local
    ]
    assert [t.rank for t in got] == [1, 2, 3, 4, 5, 7]


@pytest.mark.parametrize("scratch_copies", [0, 1])
def test_videos_on_disk_are_bounded_by_the_scratch_budget(
    scratch_copies: int,
    moto_server: Server,
    videos_root: Path,
    aws_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most max_copies + 1 (the head's) copies exist; 0 still progresses, in order."""
    from sift_worker.sources.samples import iter_decoded_samples

    client, bucket = _new_bucket(moto_server, "sc")
    names = upload_tree(client, bucket, videos_root, "v/") * 2  # each clip twice
    cap = 1 << 20
    signer = RunSigner(S3Storage(bucket, "v/", endpoint=moto_server.endpoint))
    kw: dict[str, Any] = {"workers": 4, "window": 4, "every_n": 3}
    local = list(iter_decoded_samples(videos_root, names, 32, **kw))
    with Fetcher(signer.allowed_hosts()) as fetch:
        remote = RemoteInput(
            signer, fetch, tmp_path / "s", max_download=cap, scratch=(scratch_copies + 1) * cap
        )
        assert remote.max_copies == scratch_copies
        alive: list[int] = []
        copy = remote.temp_copy

        def counted(name: str) -> Path:
            path = copy(name)
            alive.append(len(list(path.parent.iterdir())))
            return path

        monkeypatch.setattr(remote, "temp_copy", counted)
        got = list(iter_decoded_samples(remote, names, 32, **kw))
    assert len(alive) == len(names)
    assert max(alive) <= scratch_copies + 1
    assert [r.id for r, _ in got] == [r.id for r, _ in local]
