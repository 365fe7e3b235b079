"""The CLI: `run` reports after writing its outputs, `report [--dry-run]`, `receiver`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from sift_worker.cli import EXIT_REPORT_PENDING, EXIT_REPORT_REJECTED, main
from sift_worker.reporting.outbox import Outbox, OutboxState
from sift_worker.reporting.receiver import ReceiverThread

from .conftest import CANARY_SECRET_VALUE, CANARY_TOKEN, Finished

EXIF_CANARY = "canary-exif-Artist-Wq4"
PIXEL_CANARY = bytes([13, 37, 42]) * 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(tmp_path: Path, run: Any) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run.model_dump(mode="json", by_alias=True, exclude_none=True)))
    return path


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SIFT_RESULTS_TOKEN", CANARY_TOKEN)
    monkeypatch.setenv("SIFT_TERMINATION_LOG", "/dev/null")
    return CANARY_TOKEN


def test_dry_run_prints_exactly_the_outbox_and_sends_nothing(
    tmp_path: Path, receiver: ReceiverThread, finished: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _manifest(
        tmp_path, finished.run(receiver.url, {"filenames": "none", "embeddings": True})
    )
    assert main(["report", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    outbox = Outbox.open(finished.output)
    assert outbox is not None
    expected = [line for method, p, body in outbox.requests() for line in (f"{method} {p}", body)]
    assert out[1:] == expected
    assert out[2] == (outbox.folder / "create.json").read_text()
    assert receiver.store.requests() == []  # nothing sent


def test_report_sends_the_outbox_and_says_so(
    tmp_path: Path,
    receiver: ReceiverThread,
    finished: Finished,
    token: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _manifest(tmp_path, finished.run(receiver.url))
    monkeypatch.setenv("SIFT_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert main(["report", str(path)]) == 0
    assert "reporting: Reported (1 of 1 chunks acknowledged)" in capsys.readouterr().out
    assert receiver.store.completed("uid-1234")
    assert json.loads((tmp_path / "termination-log").read_text()) == {
        "reported": "Reported",
        "reason": "",
        "chunks": 1,
        "acked": 1,
    }


def test_report_exit_codes_pending_and_rejected(
    tmp_path: Path,
    receiver: ReceiverThread,
    finished: Finished,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIFT_REPORT_RETRY_BUDGET", "0.5")
    closed = f"http://127.0.0.1:{_free_port()}"
    path = _manifest(tmp_path, finished.run(closed))
    assert main(["report", str(path)]) == EXIT_REPORT_PENDING
    assert OutboxState.load(finished.output / "report").reported == "Pending"
    # the same outbox, pointed at a receiver that refuses the token
    monkeypatch.setenv("SIFT_RESULTS_TOKEN", "not-the-token")
    outbox_json = finished.output / "report" / "outbox.json"
    data = json.loads(outbox_json.read_text()) | {"apiUrl": receiver.url}
    outbox_json.write_text(json.dumps(data))
    assert main(["report", str(path)]) == EXIT_REPORT_REJECTED


def test_report_without_spec_report_sends_nothing(
    tmp_path: Path, finished: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = finished.run("http://127.0.0.1:9").model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    del doc["spec"]["report"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["report", str(path)]) == 0
    assert "nothing is sent" in capsys.readouterr().out
    assert not (finished.output / "report").exists()


def test_receiver_command_serves_and_stops(tmp_path: Path) -> None:
    port = _free_port()
    token_file = tmp_path / "token"
    token_file.write_text(CANARY_TOKEN)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sift_worker.cli",
            "receiver",
            "--port",
            str(port),
            "--token-file",
            str(token_file),
            "--store",
            str(tmp_path / "store"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(
                    f"http://127.0.0.1:{port}/v1/runs/x",
                    timeout=1,
                    headers={"Authorization": f"Bearer {CANARY_TOKEN}"},
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.1)
        assert resp.status_code == 404
        assert resp.json()["error"] == "not_found"
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/runs/x", timeout=1)
        assert resp.status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert (tmp_path / "store" / "requests.jsonl").read_text().count("\n") == 2
    assert CANARY_TOKEN not in proc.stderr.read().decode() if proc.stderr else True


# --- `sift-worker run` with a report --------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve small images, EXIF and pixels carrying canaries, and metadata side files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(12):
        pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        pixels[0, :4] = np.frombuffer(PIXEL_CANARY, dtype=np.uint8).reshape(4, 3)
        exif = Image.Exif()
        exif[0x013B] = EXIF_CANARY  # Artist
        Image.fromarray(pixels).save(root / f"img-{i:02d}.jpg", exif=exif.tobytes())
        meta = root / ".sift" / "metadata" / f"img-{i:02d}.json"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"weather": "rain", "owner": CANARY_SECRET_VALUE}))
    return root


def _run_manifest(tmp_path: Path, images: Path, url: str | None) -> Path:
    spec: dict[str, Any] = {
        "datasource": {
            "input": {"volume": {"path": str(images)}},
            "output": {"volume": {"path": str(tmp_path / "out")}},
        },
        "input": {"embeddings": {"model": "tiny"}, "metadata": {}},
        "selection": {"nSamples": 4},
    }
    if url is not None:
        spec["report"] = {
            "api": {"url": url, "tokenSecret": {"name": "t", "key": "token"}},
            "share": {"filenames": "hashed", "embeddings": True, "metadata": ["weather"]},
        }
    doc = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": "cams", "uid": "run-uid-42"},
        "spec": spec,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SIFT_RESULTS_TOKEN": CANARY_TOKEN,
        "SIFT_TERMINATION_LOG": str(path.parent / "termination-log"),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sift_worker.cli",
            "run",
            str(path),
            "--no-progress-bars",
            "--threads",
            "1",
            "--decode-workers",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_run_reports_after_writing_outputs(
    tmp_path: Path, images: Path, receiver: ReceiverThread
) -> None:
    proc = _run(_run_manifest(tmp_path, images, receiver.url))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reporting: done (1 chunks)" in proc.stdout
    assert receiver.store.completed("run-uid-42")
    chunk = receiver.store.chunk("run-uid-42", 0)
    assert chunk is not None
    assert len(chunk.samples) == 12
    assert sum(s.selected for s in chunk.samples) == 4
    assert all(s.metadata == {"weather": "rain"} for s in chunk.samples)
    written = "\n".join(
        p.read_bytes().decode("latin-1") for p in receiver.store.root.rglob("*") if p.is_file()
    )
    for canary in (
        EXIF_CANARY,
        CANARY_SECRET_VALUE,
        CANARY_TOKEN,
        "img-0",
        PIXEL_CANARY.decode("latin-1"),
    ):
        assert canary not in written
        assert canary not in proc.stderr or canary.startswith("img-")  # logs may name files
    assert CANARY_TOKEN not in proc.stderr + proc.stdout
    assert json.loads((tmp_path / "termination-log").read_text())["reported"] == "Reported"
    beats = (receiver.store.run_dir("run-uid-42") / "heartbeats.jsonl").read_text().splitlines()
    stages = [json.loads(b)["stage"] for b in beats]
    assert stages[0] in ("embedding", "thumbnails")  # the latest stage when the thread began
    assert stages[-1] == "reporting"


def test_unreachable_api_leaves_results_safe_and_says_pending(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    path = _run_manifest(tmp_path, images, closed)
    monkeypatch.setenv("SIFT_REPORT_RETRY_BUDGET", "0.5")  # the default retries for minutes
    monkeypatch.setenv("SIFT_RESULTS_TOKEN", CANARY_TOKEN)
    monkeypatch.setenv("SIFT_TERMINATION_LOG", str(tmp_path / "termination-log"))
    assert (
        main(["run", str(path), "--no-progress-bars", "--threads", "1", "--decode-workers", "1"])
        == 0
    )
    out = tmp_path / "out"
    assert (out / "selection.csv").is_file()
    state = OutboxState.load(out / "report")
    assert state.reported == "Pending"
    assert not state.acked
    assert json.loads((tmp_path / "termination-log").read_text())["reported"] == "Pending"
    # later, the API is up: `sift-worker report` sends what waited
    with ReceiverThread(tmp_path / "store", CANARY_TOKEN) as recv:
        data = json.loads((out / "report" / "outbox.json").read_text()) | {"apiUrl": recv.url}
        (out / "report" / "outbox.json").write_text(json.dumps(data))
        assert main(["report", str(path)]) == 0
        assert recv.store.completed("run-uid-42")


def test_run_without_report_sends_nothing_and_writes_no_outbox(
    tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _run_manifest(tmp_path, images, None)
    assert main(["run", str(path), "--no-progress-bars", "--threads", "1"]) == 0
    assert "reporting" not in capsys.readouterr().out
    assert (tmp_path / "out" / "selection.csv").is_file()
    assert not (tmp_path / "out" / "report").exists()
    assert not (tmp_path / "out" / ".sift").exists()


def test_report_before_the_run_finished_says_so(
    tmp_path: Path, finished: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    (finished.output / "selection.csv").unlink()
    path = _manifest(tmp_path, finished.run("http://127.0.0.1:9"))
    assert main(["report", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no finished run to report" in err
    assert "selection.csv: No such file" in err
