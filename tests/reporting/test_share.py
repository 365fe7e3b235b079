"""Each share setting produces exactly the documented payload fields, and nothing else."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sift_worker.reporting import report_run
from sift_worker.reporting.outbox import OutboxState, build_outbox
from sift_worker.reporting.receiver import ReceiverThread
from sift_worker.reporting.salt import hash_filename, salt_path
from sift_worker.reporting.schema import Chunk, RunCreate, Sample

from .conftest import CANARY_SECRET_VALUE, CANARY_SIGNED_URL, FAST, Finished, make_finished

BASE = {"index", "selected", "status"}  # plus rank, exactly on selected samples

# share settings -> the exact sample fields (docs/reporting.md, "The payload per setting")
TABLE: list[tuple[dict[str, Any], set[str], set[str]]] = [
    ({}, BASE | {"filenameHash"}, set()),  # the defaults share the least
    ({"filenames": "plain"}, BASE | {"filename"}, set()),
    ({"filenames": "hashed"}, BASE | {"filenameHash"}, set()),
    ({"filenames": "none"}, BASE, set()),
    ({"filenames": "none", "embeddings": True}, BASE | {"embedding"}, {"embeddingDim"}),
    ({"filenames": "none", "metadata": ["weather"]}, BASE | {"metadata"}, set()),
    (
        {"filenames": "plain", "embeddings": True, "metadata": ["weather", "blur"]},
        BASE | {"filename", "embedding", "metadata"},
        {"embeddingDim"},
    ),
]
RUN_FIELDS = {"name", "namespace", "share", "workerVersion", "samples", "chunks"}


@pytest.mark.parametrize(
    ("share", "fields", "run_extra"), TABLE, ids=[json.dumps(t[0]) for t in TABLE]
)
def test_share_settings_give_exactly_the_documented_fields(
    share: dict[str, Any],
    fields: set[str],
    run_extra: set[str],
    receiver: ReceiverThread,
    finished: Finished,
    token_env: dict[str, str],
) -> None:
    run = finished.run(receiver.url, share)
    assert report_run(run, finished.output, finished.input, env=token_env, retry=FAST).reported == (
        "Reported"
    )
    create = json.loads((receiver.store.run_dir("uid-1234") / "create.json").read_text())
    assert set(create) == RUN_FIELDS | run_extra
    chunk = json.loads((receiver.store.run_dir("uid-1234") / "chunks" / "0.json").read_text())
    assert set(chunk) == {"index", "samples"}
    assert len(chunk["samples"]) == len(finished.names)
    for sample in chunk["samples"]:
        expected = fields | ({"rank"} if sample["selected"] else set())
        if sample["status"] == "corrupt":  # never decoded: no embedding
            expected -= {"embedding"}
        assert set(sample) == expected, sample
        if "metadata" in sample:
            assert set(sample["metadata"]) <= set(share["metadata"])
    if "embedding" in fields:
        assert all(
            len(s["embedding"]) == create["embeddingDim"] == 8 for s in chunk["samples"][:-1]
        )
    text = json.dumps(chunk) + json.dumps(create)
    if "filename" not in fields:
        assert not any(n in text for n in finished.names)
        assert "frame 0" not in text
        assert "site-" not in text
    # never a non-allowlisted key, or a value that is a URL with a query string
    assert CANARY_SECRET_VALUE not in text
    assert "owner_email" not in text
    assert "X-Amz-Signature" not in text
    assert "source_url" not in text


def test_statuses_and_ranks_follow_selection_csv(tmp_path: Path, finished: Finished) -> None:
    outbox = build_outbox(finished.run("http://127.0.0.1:9"), finished.output, finished.input)
    samples = Chunk.model_validate_json(outbox.chunk_body(0)).samples
    assert [s.rank for s in samples if s.selected] == [1, 2, 3]
    assert samples[-1].status == "corrupt"
    assert samples[-2].status == "excluded"
    assert json.loads(outbox.complete_body())["summary"]["stopReason"] == "reached nSamples"


def test_hashed_filenames_are_stable_keyed_and_not_the_name(tmp_path: Path) -> None:
    first = make_finished(tmp_path / "a")
    run = first.run("http://127.0.0.1:9", {"filenames": "hashed"})
    ids1 = [s.filename_hash for s in _samples(build_outbox(run, first.output, first.input))]
    salt_file = salt_path(first.output, run.spec.datasource.input)
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_bytes()
    # a second run over the same input into the same output: a fresh outbox, the same ids
    shutil.rmtree(first.output / "report")
    ids2 = [s.filename_hash for s in _samples(build_outbox(run, first.output, first.input))]
    assert ids1 == ids2
    assert salt_file.read_bytes() == salt
    assert len(set(ids1)) == len(first.names)
    for name, h in zip(first.names, ids1, strict=True):
        assert h == hash_filename(salt, name)
        assert h not in (name, hashlib.sha256(name.encode()).hexdigest())  # keyed, not plain
    # another output (another salt): other ids for the same names
    other = make_finished(tmp_path / "b")
    run_b = other.run("http://127.0.0.1:9", {"filenames": "hashed"})
    ids3 = [s.filename_hash for s in _samples(build_outbox(run_b, other.output, other.input))]
    assert set(ids3).isdisjoint(ids1)


def test_chunks_are_bounded(tmp_path: Path) -> None:
    many = make_finished(tmp_path / "r", n=2500, dim=4)
    run = many.run("http://127.0.0.1:9", {"filenames": "plain", "embeddings": True})
    outbox = build_outbox(run, many.output, many.input, max_chunk_bytes=64 * 1024)
    sizes = [len(outbox.chunk_body(i)) for i in range(outbox.chunks)]
    counts = [
        len(Chunk.model_validate_json(outbox.chunk_body(i)).samples) for i in range(outbox.chunks)
    ]
    assert sum(counts) == 2500
    assert max(counts) <= 1000
    assert max(sizes) <= 64 * 1024 + 1024  # one sample over at most
    assert RunCreate.model_validate_json(outbox.create_body()).chunks == outbox.chunks > 1


BAD_SAMPLES = [
    {"filename": "/etc/passwd"},
    {"filename": "../../secret.jpg"},
    {"filename": "s3://bucket/key.jpg"},
    {"filename": CANARY_SIGNED_URL},
    {"metadata": {"note": CANARY_SIGNED_URL}},
    {"metadata": {"note": "data:image/jpeg;base64,/9j/4AAQSkZJRg"}},
    {"metadata": {"note": "x" * 300}},
    {"metadata": {"nested": {"a": 1}}},
    {"thumbnail": "/9j/4AAQSkZJRg"},
    {"pixels": [0, 1, 2]},
    {"embedding": [0.1] * 4097},
    {"filenameHash": "not-a-hash"},
]


@pytest.mark.parametrize("extra", BAD_SAMPLES, ids=[str(b)[:40] for b in BAD_SAMPLES])
def test_the_schema_cannot_carry_paths_urls_pixels_or_blobs(extra: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Sample.model_validate({"index": 0, "selected": False, "status": "ok", **extra})


def _samples(outbox: Any) -> list[Sample]:
    return [
        s
        for i in range(outbox.chunks)
        for s in Chunk.model_validate_json(outbox.chunk_body(i)).samples
    ]


def _with_predictions(finished: Finished, task: str) -> None:
    root = finished.input / ".sift" / "predictions"
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.json").write_text(json.dumps({"task": task, "classes": ["car", "person"]}))
    for i, name in enumerate(finished.names[:-1]):  # the last sample has none
        target = root / (name.rsplit(".", 1)[0] + ".json")
        target.parent.mkdir(parents=True, exist_ok=True)
        if task == "classification":
            value: dict[str, Any] = {"probabilities": [0.75, 0.25], "note": CANARY_SECRET_VALUE}
        else:
            value = {
                "objects": [{"box": [1, 2, 30, 40], "class": "person", "score": 0.9}] * (i % 3)
            }
        target.write_text(json.dumps(value))


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_predictions_are_shared_only_when_allowed(
    task: str, receiver: ReceiverThread, finished: Finished, token_env: dict[str, str]
) -> None:
    _with_predictions(finished, task)
    spec = {"embeddings": {"model": "tiny"}, "predictions": {"task": task}}
    run = finished.run(receiver.url, {"filenames": "none", "predictions": True}, input_spec=spec)
    assert report_run(run, finished.output, finished.input, env=token_env, retry=FAST).reported == (
        "Reported"
    )
    create = json.loads((receiver.store.run_dir("uid-1234") / "create.json").read_text())
    assert create["predictionTask"] == task
    assert create["classes"] == ["car", "person"]
    chunk = receiver.store.chunk("uid-1234", 0)
    assert chunk is not None
    preds = [s.predictions for s in chunk.samples]
    assert preds[-1] is None  # no predictions file
    if task == "classification":
        assert all(
            p is not None and p.probabilities == [0.75, 0.25] and p.objects is None
            for p in preds[:-1]
        )
    else:
        counts = [len(p.objects or []) if p is not None else None for p in preds]
        assert counts[:-1] == [i % 3 for i in range(len(finished.names) - 1)]
        first = next(p for p in preds if p is not None and p.objects)
        assert first.objects is not None
        assert (first.objects[0].label, first.objects[0].score, first.objects[0].box) == (
            "person",
            0.9,
            [1.0, 2.0, 30.0, 40.0],
        )
    text = (receiver.store.run_dir("uid-1234") / "chunks" / "0.json").read_text()
    assert CANARY_SECRET_VALUE not in text
    assert "note" not in text


def test_a_local_run_again_is_a_new_run_a_cluster_retry_is_not(tmp_path: Path) -> None:
    local = make_finished(tmp_path / "local")
    run = local.run("http://127.0.0.1:9", uid=None)
    first = build_outbox(run, local.output, local.input, new_run=True)
    assert first.run_uid.startswith("local-")
    assert build_outbox(run, local.output, local.input).run_uid == first.run_uid  # resend
    again = build_outbox(run, local.output, local.input, new_run=True)
    assert again.run_uid != first.run_uid
    cluster = make_finished(tmp_path / "cluster")
    crun = cluster.run("http://127.0.0.1:9")
    one = build_outbox(crun, cluster.output, cluster.input, new_run=True)
    state = OutboxState.load(one.folder)
    state.acked = {0}
    state.save(one.folder)
    (cluster.output / "selection.csv").write_text(
        (cluster.output / "selection.csv").read_text().replace(",ok,", ",pooled,")
    )
    two = build_outbox(crun, cluster.output, cluster.input, new_run=True)  # a retried pod
    assert (two.run_uid, two.chunk_body(0)) == ("uid-1234", one.chunk_body(0))
