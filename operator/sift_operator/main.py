"""kopf registrations: thin. Every handler hands a run key to the reconcile use-case.

* three indices (runs, their Jobs, the Jobs' pods): kopf fills them from full listings
  before any handler runs, so a restarted operator sees the whole cluster first;
* event handlers on runs, Jobs and Pods (ours: label ``sift.dev/run``) enqueue the run;
* startup configures kopf (annotations under ``sift.dev``, no finalizer: children go
  with their run through ownerReferences) and starts the reconcile workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from sift_operator.children import RUN_LABEL
from sift_operator.handlers.observe import controller_of
from sift_operator.handlers.reconcile import Options
from sift_operator.handlers.runtime import Runtime
from sift_operator.kube import Kube, connection_from_environment
from sift_operator.settings import OperatorSettings

log = logging.getLogger("sift.operator")

GROUP, VERSION, PLURAL = "sift.dev", "v1alpha1", "selectionruns"
PREFIX = "sift.dev"
OURS = {RUN_LABEL: kopf.PRESENT}


@dataclass
class Config:
    """What ``sift-operator run`` decided; read by the startup handler."""

    settings: OperatorSettings = field(default_factory=OperatorSettings)
    options: Options = field(default_factory=Options)
    fast: bool = False  # short kopf timeouts (tests, benchmarks)
    peering_mandatory: bool = False  # --peering NAME given: no silent standalone fallback


CONFIG = Config()
_state: dict[str, Runtime] = {}
_broker: dict[str, Any] = {}  # "server": the BrokerServer


class EventHandlersDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base storage under ``sift.dev``, for an operator of event and index
    handlers only.

    kopf builds and compares every object's "essence" (a deep copy) on every watch
    event, for change-detecting handlers (on.create/update/resume, daemons). This
    operator registers none (a test keeps it so), so the essence is never used: an
    empty one saves a deep copy of every run, Job and Pod per event.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()


def configure_kopf(
    settings: kopf.OperatorSettings, *, fast: bool = False, peering_mandatory: bool = False
) -> None:
    """kopf's own settings: Sift-prefixed storage, no namespace scanning, events, timeouts."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = EventHandlersDiffBase(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{PREFIX}/finalizer"  # only if a handler ever needs one
    settings.scanning.disabled = True  # explicit --namespace or cluster-wide
    settings.posting.level = (
        logging.WARNING
    )  # our own Events say what happens; kopf's only on errors
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.batching.batch_window = 0.02
    if peering_mandatory:
        settings.peering.mandatory = True
    if fast:
        settings.batching.idle_timeout = 1.0
        settings.batching.exit_timeout = 1.0
        settings.watching.reconnect_backoff = 0.2
        settings.networking.connect_timeout = 5
        settings.peering.lifetime = 4


def runtime() -> Runtime:
    return _state["runtime"]


def _snapshot(body: Any) -> dict[str, Any]:
    # kopf never changes a received body in place (each event brings a new one): a
    # shallow copy is a stable snapshot
    return dict(body)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    configure_kopf(settings, fast=CONFIG.fast, peering_mandatory=CONFIG.peering_mandatory)
    kube = Kube(connection_from_environment())
    sift_settings = await _start_broker(CONFIG.settings, kube, kwargs["sift_pods"])
    rt = Runtime(
        sift_settings,
        kube,
        kwargs["sift_runs"],
        kwargs["sift_jobs"],
        kwargs["sift_pods"],
        CONFIG.options,
    )
    _state["runtime"] = rt
    await rt.start()
    log.info(
        "sift operator started (limit of running runs: %s)",
        CONFIG.settings.max_running_runs or "none",
    )


async def _start_broker(settings: OperatorSettings, kube: Kube, pods: Any) -> OperatorSettings:
    """Serve the broker (docs/broker.md); the settings gain its CA for the workers.
    ``pods``: the pod index, for checking that a token's pod is its run's."""
    if not settings.broker_enabled:
        return settings
    from sift_operator.broker import start_broker

    try:
        server = await start_broker(settings, kube, pods=pods)
    except OSError as exc:  # e.g. the port is taken: runs on object storage will fail
        log.error("the broker could not listen on port %d: %s", settings.broker_port, exc)
        return settings
    _broker["server"] = server
    return settings.model_copy(update={"broker_ca_pem": server.tls.ca_pem.decode()})


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    rt = _state.pop("runtime", None)
    if rt is not None:
        await rt.stop()
    server = _broker.pop("server", None)
    if server is not None:
        await server.stop()


@kopf.index(GROUP, VERSION, PLURAL)
async def sift_runs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): _snapshot(body)}


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def sift_jobs(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
    run = controller_of(body, "SelectionRun")
    return {(namespace or "", run): _snapshot(body)} if run else None


@kopf.index("", "v1", "pods", labels=OURS)
async def sift_pods(namespace: str | None, body: kopf.Body, **_: Any) -> dict[Any, Any] | None:
    job = controller_of(body, "Job")
    return {(namespace or "", job): _snapshot(body)} if job else None


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_event(type: str, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    runtime().run_event(type, (namespace or "", name), body)


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
async def job_event(type: str, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    run = controller_of(body, "SelectionRun")
    if run:
        runtime().job_event(type, (namespace or "", run), dict(body), name)


@kopf.on.event("", "v1", "pods", labels=OURS)
async def pod_event(namespace: str | None, body: kopf.Body, **_: Any) -> None:
    job = controller_of(body, "Job")
    if job:
        runtime().pod_event(namespace or "", job)
