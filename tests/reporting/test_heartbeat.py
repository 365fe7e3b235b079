"""Heartbeats during a run: the latest stage and progress, best effort, under the run's uid."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sift_worker.reporting import report_run
from sift_worker.reporting.heartbeat import Heartbeats
from sift_worker.reporting.receiver import Fault, ReceiverThread

from .conftest import CANARY_TOKEN, FAST, Finished


def _beats(recv: ReceiverThread, uid: str) -> list[dict[str, object]]:
    path = recv.store.run_dir(uid) / "heartbeats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_first_beat_at_once_last_beat_on_close(
    receiver: ReceiverThread, finished: Finished
) -> None:
    run = finished.run(receiver.url)
    beats = Heartbeats(run, finished.output, {"SIFT_RESULTS_TOKEN": CANARY_TOKEN}, interval=30)
    beats("embedding", 1, 100)
    deadline = time.monotonic() + 10
    while not _beats(receiver, "uid-1234"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for done in range(2, 101):
        beats("embedding", done, 100)
    beats("select", 0, None)  # not a contract stage: not sent
    started = time.monotonic()
    beats.close()
    assert time.monotonic() - started < 5  # close does not wait for the interval
    assert _beats(receiver, "uid-1234") == [
        {"stage": "embedding", "done": 1, "total": 100},
        {"stage": "embedding", "done": 100, "total": 100},
    ]


def test_a_local_runs_beats_and_report_share_one_new_uid(
    receiver: ReceiverThread, finished: Finished
) -> None:
    env = {"SIFT_RESULTS_TOKEN": CANARY_TOKEN}
    run = finished.run(receiver.url, uid=None)
    old = report_run(run, finished.output, finished.input, env=env, retry=FAST, new_run=True)
    assert old.reported == "Reported"
    beats = Heartbeats(run, finished.output, env, interval=30)
    beats("thumbnails", 3, 3)
    beats.close()
    assert beats.began_local_run
    assert beats.uid is not None
    assert beats.uid.startswith("local-")
    result = report_run(run, finished.output, finished.input, env=env, retry=FAST, new_run=False)
    assert result.reported == "Reported"
    assert result.sent == 1
    assert _beats(receiver, beats.uid)[0] == {"stage": "thumbnails", "done": 3, "total": 3}
    assert receiver.store.completed(beats.uid)
    assert len(list((receiver.store.root / "runs").iterdir())) == 2


def test_failing_heartbeats_change_nothing(
    receiver: ReceiverThread, finished: Finished, tmp_path: Path
) -> None:
    receiver.faults.add(Fault("POST", r".*/heartbeats", times=100, status=503))
    beats = Heartbeats(
        finished.run(receiver.url),
        finished.output,
        {"SIFT_RESULTS_TOKEN": CANARY_TOKEN},
        interval=0.05,
    )
    for i in range(20):
        beats("embedding", i + 1, 20)
        time.sleep(0.01)
    beats.close()
    statuses = [r["status"] for r in receiver.store.requests()]
    assert statuses
    assert set(statuses) == {503}
    assert len(statuses) <= 12
    assert _beats(receiver, "uid-1234") == []
    no_token = Heartbeats(finished.run(receiver.url), finished.output, {}, interval=0.05)
    no_token("embedding", 1, 1)
    no_token.close()
    assert len(receiver.store.requests()) == len(statuses)
