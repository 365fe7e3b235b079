"""Canaries: the token and signed URLs never reach a log line, an exception, a payload,
the outbox or the receiver's store — through success, retries, rejections and outages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sift_worker.reporting import report_run
from sift_worker.reporting.client import ReportError, ResultsClient
from sift_worker.reporting.outbox import dumps
from sift_worker.reporting.receiver import Fault, ReceiverThread
from sift_worker.reporting.schema import Chunk

from .conftest import (
    CANARY_SECRET_VALUE,
    CANARY_SIGNED_URL,
    CANARY_TOKEN,
    FAST,
    Finished,
    make_finished,
)

SIGNATURE = "canarysig0123456789abcdef"


def _everything_written(*roots: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace")
        for r in roots
        for p in r.rglob("*")
        if p.is_file()
    )


def test_token_and_signed_url_never_leak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, token_env: dict[str, str]
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore debug lines included
    run_dir = make_finished(tmp_path / "run")
    store = tmp_path / "store"
    recv = ReceiverThread(store, CANARY_TOKEN).start()
    errors: list[str] = []
    try:
        # the signed URL sits in an allowlisted metadata key: it must be dropped, not sent
        run = run_dir.run(recv.url, {"filenames": "plain", "metadata": ["weather", "source_url"]})
        recv.faults.add(Fault("PUT", r".*/chunks/0", times=2, status=500))
        recv.faults.add(Fault("PUT", r".*/runs/uid-1234", times=1, status=429, retry_after="0"))
        result = report_run(run, run_dir.output, run_dir.input, env=token_env, retry=FAST)
        assert result.reported == "Reported"
        # rejected, and unreachable, with the canary token
        recv.faults.add(Fault("POST", r".*", times=100, status=401))
        with ResultsClient(recv.url, CANARY_TOKEN, retry=FAST) as client:
            signed_chunk = (
                '{"index":0,"samples":[{"index":0,"selected":false,"status":"ok",'
                f'"metadata":{{"note":"{CANARY_SIGNED_URL}"}}}}]}}'
            )
            calls: list[tuple[str, str, str | None]] = [
                ("POST", "/runs/uid-1234/heartbeats", None),
                ("PUT", "/runs/uid-1234/chunks/0", "k"),
            ]
            for method, path, key in calls:
                body = signed_chunk if key else '{"stage":"embedding","done":1}'
                with pytest.raises(ReportError) as err:
                    client.request(method, path, body, idempotency_key=key)
                errors += [str(err.value), repr(err.value), str(err.value.args)]
    finally:
        recv.stop()
    with ResultsClient(recv.url, CANARY_TOKEN, retry=FAST) as client:  # the receiver is gone
        with pytest.raises(ReportError) as err:
            client.heartbeat("uid-1234", '{"stage":"embedding","done":1}')
        errors += [str(err.value), repr(err.value)]
    assert "connection error" in errors[-2]
    logs = "\n".join([r.getMessage() for r in caplog.records] + [caplog.text] + errors)
    written = _everything_written(run_dir.output, store)
    for canary in (CANARY_TOKEN, SIGNATURE, CANARY_SIGNED_URL, CANARY_SECRET_VALUE):
        assert canary not in logs, canary
        assert canary not in written, canary
    assert "weather" in written  # the allowlisted, plain value did go out
    assert "source_url" not in (run_dir.output / "report" / "chunk-000000.json").read_text()


def test_the_builder_cannot_put_a_signed_url_into_a_payload() -> None:
    with pytest.raises(ValueError, match="query string"):
        Chunk.model_validate(
            {
                "index": 0,
                "samples": [
                    {"index": 0, "selected": False, "status": "ok", "filename": CANARY_SIGNED_URL}
                ],
            }
        )


def test_token_from_a_file_and_a_missing_token(
    receiver: ReceiverThread, finished: Finished, tmp_path: Path
) -> None:
    run = finished.run(receiver.url)
    missing = report_run(run, finished.output, finished.input, env={}, retry=FAST)
    assert missing.reported == "Pending"
    assert "SIFT_RESULTS_TOKEN_FILE" in missing.reason
    assert receiver.store.requests() == []
    token_file = tmp_path / "token"
    token_file.write_text(CANARY_TOKEN + "\n")
    env = {"SIFT_RESULTS_TOKEN_FILE": str(token_file)}
    assert report_run(run, finished.output, finished.input, env=env, retry=FAST).reported == (
        "Reported"
    )


def test_client_refuses_a_token_with_whitespace() -> None:
    with pytest.raises(ValueError, match="whitespace") as err:
        ResultsClient("http://127.0.0.1:9", "abc\r\nX-Evil: 1")
    assert "abc" not in str(err.value)


def test_payload_dump_is_compact_and_has_no_nulls(finished: Finished) -> None:
    chunk = Chunk.model_validate(
        {"index": 0, "samples": [{"index": 0, "selected": False, "status": "ok"}]}
    )
    assert dumps(chunk) == '{"index":0,"samples":[{"index":0,"selected":false,"status":"ok"}]}'
