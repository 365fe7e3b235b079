"""The operator's moving parts, wired once at startup: API client, views, reconciler,
work queue, periodic resync. kopf's handlers (``sift_operator.main``) only call in here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from sift_operator import metrics
from sift_operator.handlers.eventing import EventRecorder
from sift_operator.handlers.observe import Key, Obj, Views, job_finished
from sift_operator.handlers.reconcile import Options, Reconciler, Resolver, resolve_host
from sift_operator.handlers.workqueue import WorkQueue
from sift_operator.kube import Kube
from sift_operator.settings import OperatorSettings

log = logging.getLogger("sift.operator")

METRICS_SECONDS = 5.0


class Runtime:
    def __init__(
        self,
        settings: OperatorSettings,
        kube: Kube,
        runs: Mapping[Key, Iterable[Obj]],
        jobs: Mapping[Key, Iterable[Obj]],
        pods: Mapping[Key, Iterable[Obj]],
        options: Options | None = None,
        resolver: Resolver = resolve_host,
    ) -> None:
        self.options = options or Options()
        self.kube = kube
        self.views = Views(runs, jobs, pods)
        self.queue: WorkQueue[Key] = WorkQueue(self._process, workers=self.options.workers)
        self.recorder = EventRecorder(kube, idle=self.queue.idle)
        self.reconciler = Reconciler(
            settings, kube, self.views, self.recorder, self.options, resolver
        )
        self.ready = asyncio.Event()  # set by the first handler call: indices are complete
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.queue.start()
        self._loops.append(asyncio.create_task(self._resync(), name="sift-resync"))
        self._loops.append(asyncio.create_task(self._gauges(), name="sift-metrics"))

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.queue.stop()
        await self.recorder.flush()
        await self.kube.close()

    async def _process(self, key: Key) -> None:
        delay = await self.reconciler.reconcile(key)
        if delay is not None:
            self.queue.add_after(key, delay)

    # --- entry points for kopf's handlers ---

    def run_event(
        self, event_type: str | None, key: Key, run: Mapping[str, Any] | None = None
    ) -> None:
        self.ready.set()
        if event_type == "DELETED":
            self.queue.forget(key)
            self.reconciler.forget(key)
            self.kick_waiting()
            return
        if run is not None and self.views.run_writes.echoes(key, run):
            return  # our own status write coming back: a reconcile would change nothing
        self.queue.add(key)

    def job_event(self, event_type: str | None, key: Key, job: Obj, job_name: str) -> None:
        self.ready.set()
        job_key = (key[0], job_name)
        if event_type == "DELETED":
            self.views.job_runs.pop(job_key, None)
        else:
            self.views.job_runs[job_key] = key[1]
            if self.views.job_writes.echoes(key, job) or self.views.report_writes.echoes(key, job):
                return  # the Job as we created or patched it: nothing new to act on
        self.queue.add(key)
        if event_type == "DELETED" or job_finished(job):
            self.kick_waiting()

    def pod_event(self, namespace: str, job_name: str) -> None:
        self.ready.set()
        run_name = self.views.job_runs.get((namespace, job_name))
        if run_name is not None:
            self.queue.add((namespace, run_name))

    def kick_waiting(self) -> None:
        """A slot may have freed: look again at the runs first in line."""
        for key in self.reconciler.admission.next_waiting(self.views):
            self.queue.add(key)

    # --- periodic work ---

    async def _resync(self) -> None:
        """Look at every run now and then: recovers from anything not watched (Secrets)."""
        await self.ready.wait()
        while True:
            await asyncio.sleep(self.options.resync_seconds)
            for key in list(self.views.runs_index.keys()):
                self.queue.add(key)

    async def _gauges(self) -> None:
        while True:
            try:
                metrics.set_phase_counts(self.reconciler.phase_counts())
                metrics.set_report_counts(self.reconciler.report_counts())
            except Exception:  # metrics must never stop the operator
                log.exception("could not update the run gauges")
            await asyncio.sleep(METRICS_SECONDS)
