"""The one reconcile use-case: converge a SelectionRun's children and status.

Level-based and idempotent. Everything it reads comes from kopf's indices (plus the
answers of its own recent writes); it writes only what differs:

1. a run that is over (Succeeded/Failed) never gets a Job again, even after the Job's
   TTL removed it;
2. before the Job exists: the Secrets the spec names must exist (with their keys), the
   results API host must resolve (unless ``egress.apiCIDRs`` pins it), and the
   operator-wide limit must have a slot; then the children are created in order
   (ServiceAccount, ConfigMap, NetworkPolicy, [CiliumNetworkPolicy], Job), a 409
   AlreadyExists counting as done, so restarts never duplicate anything;
3. once the Job exists its spec is never changed, except ``suspend`` when neither Kueue
   (``spec.worker.queueName``) is in charge nor the Job has finished: ``spec.suspend``
   of the run and the operator's own queue decide it. Any other spec change is
   reported (Accepted reason SpecChangeIgnored, a Warning event) and not applied;
4. ``.status`` is recomputed from what is observed and patched only when it differs;
   each transition becomes an Event.

Problems (a missing Secret, quota exceeded, ...) are reported in the status with their
own reason and retried with backoff; the run recovers by itself once they are fixed.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sift_worker.api.v1alpha1 import SelectionRunSpec

from sift_operator import conditions as conds
from sift_operator import metrics
from sift_operator.children import InvalidRunError, desired_children, parse_spec
from sift_operator.children.networkpolicy import api_endpoint, storage_endpoints
from sift_operator.children.reportjob import build_report_job, report_job_name
from sift_operator.events import merged, transition_events
from sift_operator.handlers.admission import Admission, kueue_managed
from sift_operator.handlers.eventing import EventRecorder
from sift_operator.handlers.observe import Key, Obj, Views, job_finished, job_suspended
from sift_operator.kube import ApiError, Kube, TTLCache
from sift_operator.names import child_name
from sift_operator.settings import OperatorSettings
from sift_operator.status import Observed, Problem, StorageEgress, desired_status, is_terminal

log = logging.getLogger("sift.operator")

SPEC_HASH_ANNOTATION = "sift.dev/spec-hash"

# Reasons this module adds to the API (documented in docs/operator.md by their owner).
API_HOST_UNRESOLVED = "ApiHostUnresolved"
CREATE_FAILED = "CreateFailed"
CILIUM_UNAVAILABLE = "CiliumUnavailable"

Resolver = Callable[[str], Awaitable[Sequence[str]]]


async def resolve_host(host: str) -> list[str]:
    """The host's addresses as /32 and /128 CIDRs (an IP literal stands for itself)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [f"{ip}/{ip.max_prefixlen}"]
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    cidrs = set()
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        cidrs.add(f"{address}/32" if family == socket.AF_INET else f"{address}/128")
    return sorted(cidrs)


@dataclass
class Options:
    """Runtime tunables (not part of the API; the CLI sets them)."""

    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 120.0
    resync_seconds: float = 300.0
    dns_ttl_seconds: float = 300.0
    workers: int = 32


def spec_hash(spec: Mapping[str, Any] | None) -> str:
    """What the Job was built from; ``suspend`` is excluded (it may change)."""
    body = {k: v for k, v in (spec or {}).items() if k != "suspend"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def egress_kind(spec: SelectionRunSpec) -> str:
    if spec.egress.mode == "cilium":
        return conds.EGRESS_NETWORK_POLICY_AND_CILIUM
    return conds.EGRESS_NETWORK_POLICY


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Reconciler:
    settings: OperatorSettings
    kube: Kube
    views: Views
    recorder: EventRecorder
    options: Options = field(default_factory=Options)
    resolver: Resolver = resolve_host
    clock: Callable[[], datetime] = _now
    admission: Admission = field(init=False)
    dns: TTLCache = field(init=False)
    attempts: dict[Key, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.max_running_runs)
        self.dns = TTLCache(self.options.dns_ttl_seconds)

    def forget(self, key: Key) -> None:
        self.attempts.pop(key, None)
        self.admission.forget(key)
        self.views.forget(key)

    def backoff(self, key: Key) -> float:
        n = self.attempts.get(key, 0)
        self.attempts[key] = n + 1
        return float(min(self.options.retry_max_seconds, self.options.retry_base_seconds * 2**n))

    # --- pre-flight checks ---

    async def secret_problems(self, run: Obj, spec: SelectionRunSpec) -> list[Problem]:
        namespace = str(run["metadata"]["namespace"])
        wanted: list[tuple[str, str | None, str]] = []
        for role in ("input", "output"):
            name = getattr(spec.datasource, role).credentials_secret
            if name:
                wanted.append((name, None, f"spec.datasource.{role}.credentialsSecret"))
        if spec.report is not None:
            ref = spec.report.api.token_secret
            wanted.append((ref.name, ref.key, "spec.report.api.tokenSecret"))
        problems: list[Problem] = []
        for name, key, where in wanted:
            keys = await self.kube.secret_keys(namespace, name)
            if keys is None:
                problems.append(
                    Problem(conds.SECRET_NOT_FOUND, f"Secret {name} ({where}) does not exist")
                )
            elif key is not None and key not in keys:
                problems.append(
                    Problem(
                        conds.SECRET_KEY_NOT_FOUND,
                        f"Secret {name} ({where}) has no key {key}",
                    )
                )
        return problems

    async def api_cidrs(self, run: Obj, spec: SelectionRunSpec) -> tuple[list[str], list[Problem]]:
        if spec.egress.api_cidrs:
            return list(spec.egress.api_cidrs), []
        if self.settings.api_cidrs and api_endpoint(spec, self.settings) is not None:
            return list(self.settings.api_cidrs), []  # the operator's default pins them
        endpoint = api_endpoint(spec, self.settings)
        if endpoint is None:
            return [], []
        host = endpoint[0]
        try:
            return list(await self.lookup(host)), []
        except (OSError, TimeoutError, UnicodeError) as exc:
            return [], [
                Problem(
                    API_HOST_UNRESOLVED,
                    f"cannot resolve the results API host {host} for the egress policy "
                    f"({type(exc).__name__}); pin spec.egress.apiCIDRs or fix DNS",
                )
            ]

    async def storage_cidrs(self, run: Obj, spec: SelectionRunSpec) -> StorageEgress:
        """The storage hosts' addresses for the NetworkPolicy, unless the spec pins CIDRs.

        A host that does not resolve does not hold the run back (a CNI that does not
        enforce NetworkPolicy lets the worker through anyway); the condition names it.
        """
        if spec.egress.storage_cidrs:
            return StorageEgress("Pinned")
        hosts = sorted({host for host, _ in storage_endpoints(spec)})
        if not hosts:
            return StorageEgress("None")
        if self.settings.storage_cidrs:  # the operator's default pins them for every run
            return StorageEgress("Default", cidrs=tuple(self.settings.storage_cidrs))
        cidrs: set[str] = set()
        unresolved: list[str] = []
        for host in hosts:
            try:
                cidrs.update(await self.lookup(host))
            except (OSError, TimeoutError, UnicodeError):
                unresolved.append(host)
        return StorageEgress(
            "Resolved", hosts=tuple(hosts), cidrs=tuple(sorted(cidrs)), unresolved=tuple(unresolved)
        )

    async def lookup(self, host: str) -> tuple[str, ...]:
        """A host's CIDRs, cached for ``dns_ttl_seconds``; one lookup at a time per host."""
        cached = self.dns.get(host)
        if cached is not None:
            return tuple(cached)
        async with self.dns.lock(host):
            cached = self.dns.get(host)
            if cached is not None:
                return tuple(cached)
            cidrs = tuple(await asyncio.wait_for(self.resolver(host), 10))
            if not cidrs:
                raise OSError(f"{host} has no addresses")
            self.dns.put(host, cidrs)
            return cidrs

    # --- writes ---

    async def create_children(
        self, run: Obj, children: Sequence[Obj]
    ) -> tuple[Obj | None, list[Problem]]:
        """Create the children; AlreadyExists is success. Returns the Job as stored.

        The Job comes last, once everything its pod needs exists; the others do not
        depend on each other and are created at once.
        """
        *others, job_obj = children
        results = await asyncio.gather(*(self._create_one(obj) for obj in others))
        problems = [p for _, p in results if p is not None]
        if problems:
            return None, problems[:1]
        job, problem = await self._create_one(job_obj)
        return job, [problem] if problem is not None else []

    async def _create_one(self, obj: Obj) -> tuple[Obj | None, Problem | None]:
        kind = obj["kind"]
        try:
            return await self.kube.create(obj), None
        except ApiError as exc:
            if exc.already_exists:
                if kind != "Job":
                    return None, None
                meta = obj["metadata"]
                return await self.kube.get("batch/v1", "Job", meta["namespace"], meta["name"]), None
            if exc.quota_exceeded:
                return None, Problem(
                    conds.QUOTA_EXCEEDED, f"cannot create the {kind}: {exc.message}"
                )
            if kind == "CiliumNetworkPolicy" and exc.status in (404, 405):
                return None, Problem(
                    CILIUM_UNAVAILABLE,
                    "egress.mode is cilium but the cluster has no CiliumNetworkPolicy "
                    "resource; the Job is not created without it",
                )
            return None, Problem(
                CREATE_FAILED, f"cannot create the {kind}: {exc.status} {exc.message}"
            )

    async def set_suspend(self, key: Key, job: Obj, suspend: bool) -> Obj:
        answer = await self.kube.merge_patch(job, {"spec": {"suspend": suspend}})
        self.views.job_writes.put(key, answer)
        return answer or job

    # --- the use-case ---

    async def reconcile(self, key: Key) -> float | None:
        """Converge one run. Returns a delay after which to look again (backoff), or None."""
        started = time.perf_counter()
        try:
            return await self._reconcile(key)
        except ApiError as exc:
            metrics.RECONCILE_ERRORS.inc()
            log.warning("reconcile of %s/%s: %s", key[0], key[1], exc)
            return self.backoff(key)
        finally:
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)

    async def _reconcile(self, key: Key) -> float | None:
        run = self.views.run(key)
        if run is None:
            self.forget(key)
            return None
        meta = run.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the children
        now = self.clock()
        old_status: Mapping[str, Any] = run.get("status") or {}
        generation = int(meta.get("generation") or 0)
        namespace, name = key
        job = self.views.job(key)
        problems: list[Problem] = []
        waiting = False
        egress = conds.EGRESS_NETWORK_POLICY
        storage: StorageEgress | None = None
        retry = False

        try:
            spec = parse_spec(run)
        except InvalidRunError as exc:
            spec = None
            problems.append(Problem(conds.INVALID_SPEC, str(exc)))

        if spec is not None:
            egress = egress_kind(spec)
            kueue = kueue_managed(run)
            # Not the first look at this run, and no Job: the run may be going away (the
            # garbage collector deletes its Job, and that event can arrive before the run's
            # own). Creating children for a deleted run would start a pod.
            if (
                job is None
                and old_status
                and not is_terminal(old_status)
                and not await self._still_exists(run)
            ):
                return None
            if job is None and not is_terminal(old_status):
                problems += await self.secret_problems(run, spec)
                cidrs: list[str] = []
                if not problems:
                    cidrs, found = await self.api_cidrs(run, spec)
                    problems += found
                if not problems:
                    storage = await self.storage_cidrs(run, spec)
                if problems:
                    self.admission.blocked.add(key)
                    retry = True
                else:
                    self.admission.blocked.discard(key)
                    job, found, waiting = await self._start(
                        key, run, spec, cidrs, list(storage.cidrs) if storage else [], kueue
                    )
                    problems += found
                    retry = bool(found)
            elif job is not None and not kueue and not job_finished(job):
                job, waiting = await self._steer_suspend(key, run, spec, job)

        spec_changed = job is not None and (
            ((job.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
            not in (None, spec_hash(run.get("spec")))
        )
        pods = self.views.pods(namespace, child_name(name)) if job is not None else []
        report_job = self.views.report_job(key)
        report_pods = (
            self.views.pods(namespace, report_job_name(name)) if report_job is not None else []
        )
        observed = Observed(
            generation=generation,
            job=job,
            pods=pods,
            waiting_for_slot=waiting,
            problems=problems,
            egress=egress,
            spec_change_ignored=spec_changed,
            storage=storage,
            report_job=report_job,
            report_pods=report_pods,
            report_retry_seconds=self.settings.report_retry_seconds,
        )
        new_status = desired_status(run, observed, now)
        if report_job is None and spec is not None and _reason(new_status) == conds.REPORT_RETRYING:
            await self._start_report(key, run, new_status, now)
        if new_status != dict(old_status):
            # a merge patch of the whole status: keys that went away are set to null
            patch = {k: new_status.get(k) for k in {*old_status, *new_status}}
            answer = await self.kube.merge_patch(run, {"status": patch}, "status")
            self.views.run_writes.put(key, answer)
            events = [
                (e.type, e.reason, e.message)
                for e in merged(transition_events(old_status, new_status))
            ]
            self.recorder.post_soon(run, events, now)  # off the reconcile's critical path
            self._record_metrics(run, old_status, new_status, now)

        if retry:
            return self.backoff(key)
        self.attempts.pop(key, None)
        return None

    async def _start_report(
        self, key: Key, run: Obj, status: Mapping[str, Any], now: datetime
    ) -> None:
        """The follow-up report Job, for what is left of the retry window."""
        finished = _parse(status.get("completionTime")) or now
        left = self.settings.report_retry_seconds - (now - finished).total_seconds()
        if left < 1:
            return
        job_obj = build_report_job(run, self.settings, deadline_seconds=int(left))
        job, problem = await self._create_one(job_obj)
        if problem is not None:
            log.warning("report Job of %s/%s: %s", key[0], key[1], problem.message)
        elif job is not None:
            self.views.report_writes.put(key, job)

    async def _still_exists(self, run: Obj) -> bool:
        meta = run.get("metadata") or {}
        live = await self.kube.get(
            str(run.get("apiVersion") or "sift.dev/v1alpha1"),
            "SelectionRun",
            str(meta.get("namespace")),
            str(meta.get("name")),
        )
        live_meta = (live or {}).get("metadata") or {}
        return (
            live is not None
            and live_meta.get("uid") == meta.get("uid")
            and not live_meta.get("deletionTimestamp")
        )

    async def _start(
        self,
        key: Key,
        run: Obj,
        spec: SelectionRunSpec,
        cidrs: list[str],
        storage_cidrs: list[str],
        kueue: bool,
    ) -> tuple[Obj | None, list[Problem], bool]:
        """Create the children; returns (job, problems, waiting_for_slot)."""
        if kueue or spec.suspend or not self.admission.enabled:
            job, problems = await self._create(
                key, run, spec, cidrs, storage_cidrs, suspend=kueue or spec.suspend
            )
            return job, problems, False
        async with self.admission.lock:
            waiting = not self.admission.may_run(key, self.views)
            job, problems = await self._create(
                key, run, spec, cidrs, storage_cidrs, suspend=waiting
            )
            if problems or job is None:
                self.admission.pending.discard(key)
            return job, problems, waiting

    async def _create(
        self,
        key: Key,
        run: Obj,
        spec: SelectionRunSpec,
        cidrs: list[str],
        storage_cidrs: list[str],
        *,
        suspend: bool,
    ) -> tuple[Obj | None, list[Problem]]:
        try:
            children = desired_children(
                run,
                self.settings,
                api_cidrs=cidrs,
                storage_cidrs=storage_cidrs,
                suspend=suspend,
                spec=spec,
            )
        except InvalidRunError as exc:
            return None, [Problem(conds.INVALID_SPEC, str(exc))]
        job_obj = children.job
        job_obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(
            run.get("spec")
        )
        job, problems = await self.create_children(run, children.all())
        if job is not None:
            self.views.job_writes.put(key, job)
        return job, problems

    async def _steer_suspend(
        self, key: Key, run: Obj, spec: SelectionRunSpec, job: Obj
    ) -> tuple[Obj, bool]:
        """spec.suspend and the operator's queue decide a non-Kueue Job's ``suspend``."""
        suspended = job_suspended(job)
        if spec.suspend:
            if not suspended:
                job = await self.set_suspend(key, job, True)
            return job, False
        if not suspended:
            return job, False
        if not self.admission.enabled:
            return await self.set_suspend(key, job, False), False
        async with self.admission.lock:
            if self.admission.may_run(key, self.views):
                return await self.set_suspend(key, job, False), False
        return job, True

    def _record_metrics(
        self, run: Obj, old: Mapping[str, Any], new: Mapping[str, Any], now: datetime
    ) -> None:
        if not is_terminal(old) and is_terminal(new):
            metrics.record_outcome(conds.is_true(new, conds.SUCCEEDED))
            start, end = _parse(new.get("startTime")), _parse(new.get("completionTime"))
            if start is not None and end is not None:
                metrics.RUN_DURATION.observe(max(0.0, (end - start).total_seconds()))
        first_start = not old.get("startTime") and not conds.is_true(old, conds.RUNNING)
        if first_start and conds.is_true(new, conds.RUNNING):
            created = _parse((run.get("metadata") or {}).get("creationTimestamp"))
            if created is not None:
                metrics.QUEUE_WAIT.observe(max(0.0, (now - created).total_seconds()))

    def phase_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.views.all_runs():
            phase = str((run.get("status") or {}).get("phase") or "Pending")
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def report_counts(self) -> dict[str, int]:
        """Runs by the reason of their Reported condition ("None": not set yet)."""
        counts: dict[str, int] = {}
        for run in self.views.all_runs():
            reason = _reason(run.get("status") or {}) or "None"
            counts[reason] = counts.get(reason, 0) + 1
        return counts


def _reason(status: Mapping[str, Any]) -> str | None:
    found = conds.by_type(status.get("conditions")).get(conds.REPORTED)
    return None if found is None else str(found.get("reason"))


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
