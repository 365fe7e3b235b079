"""Kill and resume: a `sift-worker run` subprocess SIGKILLed mid-embedding, then rerun,
ends with the same artifacts as an uninterrupted run; on a volume and on S3 (moto)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 120
CHUNK = 8
SAME = ("selection.csv", "corrupt.csv", "duplicates.csv", "embeddings.npy", "embeddings.txt")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt-images")
    rng = np.random.default_rng(7)
    for i in range(N_IMAGES):
        px = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(px).save(root / f"img-{i:04d}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"not a jpeg")  # a corrupt sample is checkpointed too
    return root


@pytest.fixture(scope="module")
def whole(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run, on a volume (an S3 run gives the same bytes: test_run_s3)."""
    tmp = tmp_path_factory.mktemp("ckpt-whole")
    _run(
        _manifest(tmp, {"volume": {"path": str(images)}}, {"volume": {"path": str(tmp / "o")}}, "w")
    )
    return tmp / "o"


def _manifest(tmp: Path, inp: dict[str, Any], out: dict[str, Any], name: str) -> Path:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["spec"]["datasource"] = {"input": inp, "output": out}
    doc["spec"]["input"]["embeddings"]["batchSize"] = 8
    doc["spec"]["selection"]["nSamples"] = 10
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SIFT_"))}
    env.update(
        SIFT_CHECKPOINT_SAMPLES=str(CHUNK),
        AWS_ACCESS_KEY_ID=CANARY_KEY_ID,
        AWS_SECRET_ACCESS_KEY=CANARY_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    )
    env.update(extra or {})
    return env


def _cmd(manifest: Path) -> list[str]:
    exe = Path(sys.executable).with_name("sift-worker")
    return [str(exe), "run", str(manifest), "--threads", "1", "--decode-workers", "1"]


def _run(manifest: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        _cmd(manifest), env=env or _env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _kill_after_chunks(manifest: Path, chunks: Callable[[], int], env: dict[str, str]) -> int:
    """Start a run, SIGKILL it once two chunks are saved; the number saved at the kill."""
    proc = subprocess.Popen(
        _cmd(manifest), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 90
        while chunks() < 2:
            assert proc.poll() is None, "the run ended before two chunks were saved"
            assert time.monotonic() < deadline, "no checkpoint chunk appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = chunks()
    assert 2 <= saved < (N_IMAGES + 1) // CHUNK + 1, "the run was not interrupted mid-embedding"
    return saved


def _manifest_chunks(raw: bytes | None) -> int:
    return len(json.loads(raw)["chunks"]) if raw else 0


def test_a_killed_volume_run_resumes_to_the_same_results(
    images: Path, whole: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    vol = {"volume": {"path": str(images)}}
    assert not (whole / "checkpoint").exists()  # a finished run removes its checkpoint

    m = _manifest(tmp_path, vol, {"volume": {"path": str(killed)}}, "killed")
    manifest = killed / "checkpoint" / "manifest.json"

    def chunks() -> int:
        return _manifest_chunks(manifest.read_bytes() if manifest.exists() else None)

    saved = _kill_after_chunks(m, chunks, _env())
    assert not (killed / "selection.csv").exists()  # nothing reported as complete
    # every chunk the manifest lists exists whole (written before the manifest)
    for entry in json.loads(manifest.read_bytes())["chunks"]:
        assert (killed / "checkpoint" / entry["file"]).stat().st_size > 0

    logs = _run(m)
    assert f"resuming from checkpoint in {killed / 'checkpoint'}: {saved} chunks" in logs
    for name in SAME:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    counts = [json.loads((d / "run.json").read_text())["counts"] for d in (whole, killed)]
    assert counts[0] == counts[1]
    assert counts[0]["corrupt"] == 1


def test_a_checkpoint_of_another_configuration_or_a_damaged_chunk_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sift_worker.checkpoint import Checkpoint, Chunk, VolumeCheckpointStore
    from sift_worker.sources.samples import SampleRef

    store = VolumeCheckpointStore(tmp_path)
    parts = {"input": {"model": "tiny"}, "samples": "abc", "threads": 1}
    first = Checkpoint(store, parts, 2)
    for i in range(2):
        refs = [SampleRef.image(f"{i}-{j}.jpg") for j in range(2)]
        first.save(i, Chunk(np.full((2, 3), i, np.float32), refs, []))
    loaded = Checkpoint(store, parts, 2).load(3)
    assert [c.refs[0].id for c in loaded] == ["0-0.jpg", "1-0.jpg"]
    assert loaded[1].vectors.tolist() == [[1.0] * 3] * 2

    assert Checkpoint(store, {**parts, "samples": "other"}, 2).load(3) == []
    assert "ignored: it was made with a different samples" in caplog.text
    (tmp_path / "checkpoint" / "chunk-000001.npz").write_bytes(b"damaged")
    assert len(Checkpoint(store, parts, 2).load(3)) == 1  # resumes before the bad chunk
    assert "chunk-000001.npz" in caplog.text
    assert "digest does not match" in caplog.text


def test_a_chunk_made_for_other_samples_than_listed_now_is_not_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each chunk keeps the digest of its samples: a listing changed after chunk 0 (an
    object replaced, removed or added there) resumes after chunk 0 only."""
    from sift_worker.checkpoint import Checkpoint, Chunk, VolumeCheckpointStore
    from sift_worker.keystream import keys_digest
    from sift_worker.sources.samples import SampleRef

    store = VolumeCheckpointStore(tmp_path)
    listed = {"a.jpg": 1, "b.jpg": 2, "c.jpg": 3, "d.jpg": 4, "e.jpg": 5}

    def digest_of(listing: dict[str, int]) -> Callable[[int, int], str]:
        keys = list(listing)
        return lambda start, stop: keys_digest(
            keys[start:stop], [listing[k] for k in keys[start:stop]]
        )

    first = Checkpoint(store, {"m": 1}, 2, digest_of(listed))
    for i, names in enumerate((["a.jpg", "b.jpg"], ["c.jpg", "d.jpg"], ["e.jpg"])):
        first.save(
            i, Chunk(np.zeros((len(names), 3), np.float32), [SampleRef.image(n) for n in names])
        )
    assert len(Checkpoint(store, {"m": 1}, 2, digest_of(listed)).load(3)) == 3

    replaced = {**listed, "c.jpg": 30}  # same key, another object
    assert len(Checkpoint(store, {"m": 1}, 2, digest_of(replaced)).load(3)) == 1
    assert "chunk-000001.npz" in caplog.text
    assert "made for other samples than the input lists now" in caplog.text
    grown = {**listed, "f.jpg": 6}  # the partial last chunk would now hold e and f
    assert len(Checkpoint(store, {"m": 1}, 2, digest_of(grown)).load(3)) == 2

    manifest = tmp_path / "checkpoint" / "manifest.json"
    older = {**json.loads(manifest.read_text()), "version": 1}  # an older worker's
    manifest.write_text(json.dumps(older))
    assert Checkpoint(store, {"m": 1}, 2, digest_of(listed)).load(3) == []
    assert "ignored: it was made with a different format" in caplog.text


def test_a_complete_checkpoint_is_reused_without_saving_again(images: Path, tmp_path: Path) -> None:
    """A rerun whose checkpoint already covers every sample (last chunk partial)."""
    from sift_worker.checkpoint import Checkpoint, VolumeCheckpointStore
    from sift_worker.embed import embed_samples
    from sift_worker.models import build_model

    class Stage:
        done = 0

        def advance(self, n: int = 1) -> None:
            self.done += n

    names = sorted(p.name for p in images.glob("img-*.jpg"))[:6]
    model = build_model("tiny")
    store = VolumeCheckpointStore(tmp_path)
    results = []
    for _ in range(2):
        stage = Stage()
        ckpt = Checkpoint(store, {"samples": "x"}, 4)
        results.append(
            embed_samples(
                images, names, model, batch_size=4, decode_workers=1, stage=stage, checkpoint=ckpt
            )
        )
        assert stage.done == 6
    assert results[0].filenames == results[1].filenames == names
    assert results[0].embeddings.tobytes() == results[1].embeddings.tobytes()
    manifest = json.loads((tmp_path / "checkpoint" / "manifest.json").read_text())
    assert [c["rows"] for c in manifest["chunks"]] == [4, 2]


def test_a_killed_s3_run_resumes_to_the_same_results(
    moto_server: Server, images: Path, whole: Path, tmp_path: Path
) -> None:
    client = canary_s3_client(moto_server.endpoint)
    inb, outb = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=inb)
    client.create_bucket(Bucket=outb)
    for path in sorted(images.iterdir()):
        client.put_object(Bucket=inb, Key="cams/" + path.name, Body=path.read_bytes())
    s3_in = {"s3": {"bucket": inb, "prefix": "cams/", "endpoint": moto_server.endpoint}}

    def out(prefix: str) -> dict[str, Any]:
        return {"s3": {"bucket": outb, "prefix": prefix, "endpoint": moto_server.endpoint}}

    def get(key: str) -> bytes | None:
        try:
            data: bytes = client.get_object(Bucket=outb, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        return data

    m = _manifest(tmp_path, s3_in, out("killed/"), "killed")
    saved = _kill_after_chunks(
        m, lambda: _manifest_chunks(get("killed/checkpoint/manifest.json")), _env()
    )
    assert get("killed/selection.csv") is None
    assert get("killed/run.json") is None

    logs = _run(m)
    assert f"resuming from checkpoint in s3://{outb}/killed/checkpoint/: {saved} chunks" in logs
    for name in SAME:
        assert get("killed/" + name) == (whole / name).read_bytes(), name
    counts = json.loads(get("killed/run.json") or b"")["counts"]
    assert counts == json.loads((whole / "run.json").read_text())["counts"]
    for leak in (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential"):
        assert leak not in logs
