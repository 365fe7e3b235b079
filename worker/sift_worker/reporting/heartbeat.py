"""Heartbeats while a run works: its stage and progress, best effort, never in the way.

A :class:`Heartbeats` is the run's progress listener. On the first update it starts a
thread that sends the latest ``{stage, done, total}`` at once and then at most every
``interval`` seconds, one attempt each (no retries: the next beat is newer anyway).
Failures are logged once and change nothing about the run or its results. Heartbeats
may come before the run is created at the API (its size is known only at the end).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

import httpx

from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.reporting.client import ReportError, ResultsClient, RetryPolicy, read_token
from sift_worker.reporting.outbox import begin_local_run, dumps, run_uid
from sift_worker.reporting.schema import Heartbeat, Stage

log = logging.getLogger("sift.reporting")

# the run's progress stages -> the contract's stages (others are not sent)
STAGES: dict[str, Stage] = {
    "listing": "listing",
    "embedding": "embedding",
    "thumbnails": "thumbnails",
    "upload": "uploading",
}


class Heartbeats:
    def __init__(
        self,
        run: SelectionRun,
        output_dir: Path | None,
        env: Mapping[str, str],
        *,
        interval: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        assert run.spec.report is not None
        self._run = run
        self._output = output_dir
        self._env = env
        self._interval = interval
        self._transport = transport
        self._lock = threading.Lock()
        self._latest: tuple[Stage, int, int | None] | None = None
        self._sent: tuple[Stage, int, int | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self.uid: str | None = None  # set once the first beat started: the run's uid

    @property
    def began_local_run(self) -> bool:
        return self.uid is not None and not self._run.metadata.uid

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        """The progress listener (called from the run's threads)."""
        name = STAGES.get(stage)
        if name is None:
            return
        with self._lock:  # per image: keep it cheap, the thread builds the payload
            self._latest = (name, done, total)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="sift-heartbeat", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        try:
            token = read_token(self._env)
        except ValueError:
            return  # reporting will say so
        if self._run.metadata.uid:
            uid = run_uid(self._run, self._output or Path())  # the uid alone: no file
        elif self._output is not None:
            uid = begin_local_run(self._output)
        else:  # a local run on a bucket keeps its uid in the outbox the report writes
            return
        self.uid = uid
        assert self._run.spec.report is not None
        client = ResultsClient(
            self._run.spec.report.api.url,
            token,
            retry=RetryPolicy(attempts=1),
            timeout=5.0,
            connect_timeout=5.0,
            transport=self._transport,
        )
        try:
            while True:
                self._send(client, uid)
                if self._stop.wait(self._interval):
                    self._send(client, uid)  # the last state, once
                    return
        finally:
            client.close()

    def _send(self, client: ResultsClient, uid: str) -> None:
        with self._lock:
            beat = self._latest
        if beat is None or beat == self._sent:
            return
        stage, done, total = beat
        body = Heartbeat(stage=stage, done=max(0, done), total=total)
        try:
            client.heartbeat(uid, dumps(body))
            self._sent = beat
        except ReportError as exc:
            if not self._warned:
                self._warned = True
                log.info("heartbeats to the results API fail (the run goes on): %s", exc)

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(15)
