"""Faults: 500s, 429 with Retry-After, slow answers, dropped connections, an outage, a
rejected token, a worker killed mid-upload. The receiver's store ends with every chunk
exactly once, or the client stops with a clear error and retries nothing it should not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sift_worker.reporting import report_run
from sift_worker.reporting.client import (
    ReportRejectedError,
    ReportUnavailableError,
    ResultsClient,
    RetryPolicy,
)
from sift_worker.reporting.outbox import OutboxState, build_outbox
from sift_worker.reporting.receiver import Fault, ReceiverThread
from sift_worker.reporting.schema import Chunk

from .conftest import CANARY_TOKEN, FAST, Finished, make_finished

CHUNK_PATH = r"/v1/runs/uid-1234/chunks/\d+"


def _many(tmp_path: Path) -> Finished:
    return make_finished(tmp_path / "many", n=60, dim=4)


def _chunk_puts(recv: ReceiverThread) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in recv.store.requests():
        if "/chunks/" in r["path"]:
            out.setdefault(r["path"], []).append(r["status"])
    return out


def _assert_every_chunk_once(recv: ReceiverThread, chunks: int) -> None:
    assert recv.store.chunk_indices("uid-1234") == list(range(chunks))
    assert recv.store.completed("uid-1234")
    for path, statuses in _chunk_puts(recv).items():
        assert statuses.count(201) == 1, (path, statuses)  # stored exactly once


def test_500s_then_success_are_retried(
    receiver: ReceiverThread, finished: Finished, token_env: dict[str, str]
) -> None:
    receiver.faults.add(Fault("PUT", CHUNK_PATH, times=3, status=500))
    receiver.faults.add(Fault("PUT", r"/v1/runs/uid-1234", times=1, status=503))
    run = finished.run(receiver.url)
    result = report_run(run, finished.output, finished.input, env=token_env, retry=FAST)
    assert result.reported == "Reported"
    assert _chunk_puts(receiver)["/v1/runs/uid-1234/chunks/0"] == [500, 500, 500, 201]
    _assert_every_chunk_once(receiver, 1)


def test_429_honours_retry_after(
    receiver: ReceiverThread, finished: Finished, token_env: dict[str, str]
) -> None:
    receiver.faults.add(Fault("PUT", CHUNK_PATH, times=1, status=429, retry_after="1"))
    run = finished.run(receiver.url)
    started = time.monotonic()
    assert report_run(run, finished.output, finished.input, env=token_env, retry=FAST).reported == (
        "Reported"
    )
    assert time.monotonic() - started >= 1.0  # FAST's own backoff is at most 0.05 s
    assert _chunk_puts(receiver)["/v1/runs/uid-1234/chunks/0"] == [429, 201]


def test_slow_answers_and_dropped_connections_are_retried(
    receiver: ReceiverThread, tmp_path: Path
) -> None:
    many = _many(tmp_path)
    run = many.run(receiver.url, {"filenames": "plain"})
    outbox = build_outbox(run, many.output, many.input, max_chunk_bytes=1024)
    assert outbox.chunks >= 4
    receiver.faults.add(Fault("PUT", r"/v1/runs/uid-1234/chunks/1", times=1, drop=True))
    receiver.faults.add(Fault("PUT", r"/v1/runs/uid-1234/chunks/2", times=1, delay=1.5))
    from sift_worker.reporting.send import send_outbox

    with ResultsClient(receiver.url, CANARY_TOKEN, retry=FAST, timeout=0.5) as client:
        result = send_outbox(outbox, client)
    assert result.reported == "Reported"
    puts = _chunk_puts(receiver)
    assert puts["/v1/runs/uid-1234/chunks/1"][0] == 0  # the dropped one, then stored
    # the slow answer timed out on the client; the receiver stored it once, and the retry
    # with the same idempotency key was acknowledged without a second copy
    assert puts["/v1/runs/uid-1234/chunks/2"][-1] in (200, 201)
    _assert_every_chunk_once(receiver, outbox.chunks)


def test_outage_then_resume_sends_each_chunk_once(
    tmp_path: Path, token_env: dict[str, str]
) -> None:
    many = _many(tmp_path)
    store = tmp_path / "store"
    recv = ReceiverThread(store, CANARY_TOKEN).start()
    url, port = recv.url, recv.port
    run = many.run(url, {"filenames": "hashed", "embeddings": True})
    outbox = build_outbox(run, many.output, many.input, max_chunk_bytes=1500)
    assert outbox.chunks >= 6
    # the API fails for good after three chunks: the client gives up, the rest waits
    recv.faults.add(
        Fault("PUT", r"/v1/runs/uid-1234/chunks/([3-9]|\d\d+)", times=10**6, status=503)
    )
    first = report_run(run, many.output, many.input, env=token_env, retry=FAST, build=False)
    assert first.reported == "Pending"
    assert first.acked == 3
    state = OutboxState.load(outbox.folder)
    assert state.acked == {0, 1, 2}
    assert not state.completed
    recv.stop()
    # the API is down altogether
    down = report_run(run, many.output, many.input, env=token_env, retry=FAST, build=False)
    assert down.reported == "Pending"
    assert "connection error" in down.reason
    # back up (the same store): only the rest is sent
    recv = ReceiverThread(store, CANARY_TOKEN, port=port).start()
    try:
        again = report_run(run, many.output, many.input, env=token_env, retry=FAST, build=False)
        assert again.reported == "Reported"
        assert again.sent == outbox.chunks - 3
        _assert_every_chunk_once(recv, outbox.chunks)
    finally:
        recv.stop()


def test_lost_acknowledgement_is_not_sent_twice(
    receiver: ReceiverThread, tmp_path: Path, token_env: dict[str, str]
) -> None:
    """The API stored a chunk but the worker died before writing state.json."""
    many = _many(tmp_path)
    run = many.run(receiver.url)
    outbox = build_outbox(run, many.output, many.input, max_chunk_bytes=1500)
    receiver.faults.add(Fault("PUT", r"/v1/runs/uid-1234/chunks/[2-9]\d*", times=10**6, status=503))
    report_run(run, many.output, many.input, env=token_env, retry=FAST, build=False)
    OutboxState().save(outbox.folder)  # forget every acknowledgement
    receiver.faults.clear()
    again = report_run(run, many.output, many.input, env=token_env, retry=FAST, build=False)
    assert again.reported == "Reported"
    assert again.sent == outbox.chunks - 2
    puts = _chunk_puts(receiver)
    assert len(puts["/v1/runs/uid-1234/chunks/0"]) == 1  # create's answer listed it
    _assert_every_chunk_once(receiver, outbox.chunks)


def test_rejected_token_is_not_retried_and_the_error_is_clear(
    receiver: ReceiverThread, finished: Finished
) -> None:
    run = finished.run(receiver.url)
    result = report_run(
        run, finished.output, finished.input, env={"SIFT_RESULTS_TOKEN": "wrong-token"}, retry=FAST
    )
    assert result.reported == "Rejected"
    assert result.reason == (
        "results API PUT /v1/runs/uid-1234: HTTP 401 (unauthorized): missing or invalid bearer "
        "token: the token was rejected"
    )
    assert "wrong-token" not in result.reason
    assert len(receiver.store.requests()) == 1  # no retry
    assert OutboxState.load(finished.output / "report").reported == "Rejected"


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413])
def test_other_4xx_are_not_retried(receiver: ReceiverThread, status: int) -> None:
    receiver.faults.add(Fault("POST", r"/v1/runs/x/heartbeats", times=5, status=status))
    with (
        ResultsClient(receiver.url, CANARY_TOKEN, retry=FAST) as client,
        pytest.raises(ReportRejectedError) as err,
    ):
        client.heartbeat("x", '{"stage":"embedding","done":1}')
    assert err.value.status == status
    assert str(err.value).startswith(f"results API POST /v1/runs/x/heartbeats: HTTP {status}")
    assert len(receiver.store.requests()) == 1


def test_retry_budget_bounds_the_wait(receiver: ReceiverThread) -> None:
    receiver.faults.add(Fault("POST", r".*", times=100, status=500))
    policy = RetryPolicy(attempts=100, budget=0.5, base=0.1, cap=0.2)
    started = time.monotonic()
    with (
        ResultsClient(receiver.url, CANARY_TOKEN, retry=policy) as client,
        pytest.raises(ReportUnavailableError, match="gave up after"),
    ):
        client.heartbeat("x", '{"stage":"embedding","done":1}')
    assert time.monotonic() - started < 2.0


def test_worker_killed_mid_upload_then_restarted(tmp_path: Path) -> None:
    many = _many(tmp_path)
    store = tmp_path / "store"
    recv = ReceiverThread(store, CANARY_TOKEN).start()
    try:
        run = many.run(recv.url, {"filenames": "plain"})
        outbox = build_outbox(run, many.output, many.input, max_chunk_bytes=700)
        assert outbox.chunks >= 6
        manifest = tmp_path / "run.yaml"
        manifest.write_text(
            yaml.safe_dump(run.model_dump(mode="json", by_alias=True, exclude_none=True))
        )
        env = {**os.environ, "SIFT_RESULTS_TOKEN": CANARY_TOKEN}
        recv.faults.add(Fault("PUT", CHUNK_PATH, times=10**6, delay=0.3))  # slow chunks
        proc = subprocess.Popen(
            [sys.executable, "-m", "sift_worker.cli", "report", str(manifest)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while len(recv.store.chunk_indices("uid-1234")) < 2:
                assert time.monotonic() < deadline
                assert proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
        recv.faults.clear()
        assert not recv.store.completed("uid-1234")
        done = subprocess.run(
            [sys.executable, "-m", "sift_worker.cli", "report", str(manifest)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "reporting: Reported" in done.stdout
        _assert_every_chunk_once(recv, outbox.chunks)
        stored = [
            s.filename
            for i in range(outbox.chunks)
            for s in (recv.store.chunk("uid-1234", i) or _no()).samples
        ]
        assert stored == many.names  # nothing dropped, nothing doubled, in order
        assert json.loads((outbox.folder / "state.json").read_text())["completed"] is True
    finally:
        recv.stop()


def _no() -> Chunk:
    raise AssertionError("chunk missing")


def test_a_redirect_to_another_host_is_not_followed(
    receiver: ReceiverThread, finished: Finished, tmp_path: Path, token_env: dict[str, str]
) -> None:
    """A second local server stands in for a host that is not the results API."""
    with ReceiverThread(tmp_path / "elsewhere", CANARY_TOKEN) as other:
        receiver.faults.add(
            Fault(
                "PUT",
                r"/v1/runs/uid-1234",
                times=1,
                status=307,
                location=other.url + "/v1/runs/uid-1234",
            )
        )
        result = report_run(
            finished.run(receiver.url), finished.output, finished.input, env=token_env, retry=FAST
        )
        assert result.reported == "Rejected"
        assert "HTTP 307: redirects are not followed" in result.reason
        assert other.store.requests() == []  # the token never went there


def test_the_client_cannot_reach_another_host(receiver: ReceiverThread, tmp_path: Path) -> None:
    from sift_worker.fetch import EGRESS_REFUSED, EgressRefusedError

    before = EGRESS_REFUSED._value.get()
    with ReceiverThread(tmp_path / "elsewhere", CANARY_TOKEN) as other:
        with (
            ResultsClient(receiver.url, CANARY_TOKEN, retry=FAST) as client,
            pytest.raises(EgressRefusedError, match=r"127\.0\.0\.1"),
        ):
            client._client.request("PUT", other.url + "/v1/runs/x", content=b"{}")
        assert other.store.requests() == []
    assert EGRESS_REFUSED._value.get() == before + 1


def test_an_egress_refusal_underneath_is_a_rejection_not_a_retry() -> None:
    from sift_worker.fetch import EgressRefusedError

    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        raise EgressRefusedError(request.url.host)

    transport = httpx.MockTransport(refuse)
    with (
        ResultsClient("https://api.lightly.ai", CANARY_TOKEN, retry=FAST, transport=transport) as c,
        pytest.raises(ReportRejectedError, match="egress refused") as err,
    ):
        c.heartbeat("x", '{"stage":"embedding","done":1}')
    assert calls == ["api.lightly.ai"]
    assert CANARY_TOKEN not in str(err.value)
