"""The runtime's pure and in-memory parts, table-style: admission order, overlays, the
work queue, API CIDR resolution, spec hashes, Event aggregation."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from sift_operator.handlers import observe
from sift_operator.handlers.admission import admitted
from sift_operator.handlers.eventing import EventRecorder
from sift_operator.handlers.observe import Overlay, Views
from sift_operator.handlers.reconcile import Options, Reconciler, resolve_host, spec_hash
from sift_operator.handlers.workqueue import WorkQueue
from sift_operator.kube import ApiError
from sift_operator.settings import OperatorSettings, SettingsError
from sift_operator.status import storage_text
from sift_worker.api.v1alpha1 import SelectionRunSpec

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _run(name: str, created: str = "2026-12-01T10:00:00Z", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
        "spec": spec,
        "status": {},
    }


def _job(suspend: bool, finished: bool = False) -> dict[str, Any]:
    conds = [{"type": "Complete", "status": "True"}] if finished else []
    return {"spec": {"suspend": suspend}, "status": {"conditions": conds}}


RUNNING, WAITING, DONE = _job(False), _job(True), _job(False, finished=True)


@pytest.mark.parametrize(
    ("pairs", "limit", "expected"),
    [
        # two slots, nothing running: the two oldest start
        (
            [(_run("c", "T3"), None), (_run("a", "T1"), None), (_run("b", "T2"), None)],
            2,
            {"a", "b"},
        ),
        # same second: the name decides
        ([(_run("b"), None), (_run("a"), None), (_run("c"), None)], 1, {"a"}),
        # one slot held by a running Job
        ([(_run("r"), RUNNING), (_run("w1"), WAITING), (_run("w2"), WAITING)], 2, {"w1"}),
        # a finished Job frees its slot
        ([(_run("r"), DONE), (_run("w1"), WAITING), (_run("w2"), WAITING)], 1, {"w1"}),
        # Kueue runs and suspended runs take no slot and are never admitted here
        (
            [
                (_run("k", worker={"queueName": "q"}), RUNNING),
                (_run("s", suspend=True), WAITING),
                (_run("w"), WAITING),
            ],
            1,
            {"w"},
        ),
        # a terminal run never comes back
        ([({**_run("t"), "status": {"phase": "Failed"}}, None), (_run("w"), None)], 1, {"w"}),
        # full: nobody
        ([(_run("r1"), RUNNING), (_run("r2"), RUNNING), (_run("w"), WAITING)], 2, set()),
    ],
)
def test_admission_takes_the_oldest_waiting_runs(
    pairs: list[tuple[dict[str, Any], dict[str, Any] | None]], limit: int, expected: set[str]
) -> None:
    assert {name for _, name in admitted(pairs, limit)} == expected


def test_admission_counts_pending_and_skips_blocked_runs() -> None:
    pairs = [(_run("a", "T1"), None), (_run("b", "T2"), None), (_run("c", "T3"), None)]
    assert admitted(pairs, 2, extra_held={("ns", "x")}) == {("ns", "a")}
    assert admitted(pairs, 2, blocked={("ns", "a")}) == {("ns", "b"), ("ns", "c")}


def test_overlay_shows_our_write_until_the_index_catches_up(monkeypatch: Any) -> None:
    overlay = Overlay()
    key = ("ns", "r")
    old = {"metadata": {"resourceVersion": "5"}}
    ours = {"metadata": {"resourceVersion": "7"}}
    overlay.put(key, ours)
    assert overlay.newest(key, old) is ours
    newer = {"metadata": {"resourceVersion": "9"}}
    assert overlay.newest(key, newer) is newer
    assert len(overlay) == 0  # dropped once the index has it
    overlay.put(key, ours)
    monkeypatch.setattr(observe, "OVERLAY_SECONDS", -1.0)
    overlay.put(key, ours)
    assert overlay.newest(key, old) is old  # expired: the index is the truth


@pytest.mark.parametrize(
    ("written", "event", "echo"),
    [
        ("7", "7", True),  # our own write coming back through the watch
        ("7", "8", False),  # someone changed it after us (a user's spec edit)
        ("7", "6", False),  # an older event still in flight
        (None, "7", False),  # nothing written by us (e.g. after a restart)
        ("0", "0", False),  # opaque resourceVersions are never taken for an echo
    ],
)
def test_overlay_tells_the_echo_of_our_own_write(
    written: str | None, event: str, echo: bool
) -> None:
    overlay = Overlay()
    key = ("ns", "r")
    if written is not None:
        overlay.put(key, {"metadata": {"resourceVersion": written}})
    assert overlay.echoes(key, {"metadata": {"resourceVersion": event}}) is echo
    assert overlay.echoes(("ns", "other"), {"metadata": {"resourceVersion": event}}) is False


def test_the_echo_of_a_status_write_or_a_created_job_is_not_reconciled_again() -> None:
    from sift_operator.handlers.runtime import Runtime

    async def main() -> list[tuple[str, str]]:
        rt = Runtime(OperatorSettings(), FakeKube(), {}, {}, {})  # type: ignore[arg-type]
        key = ("ns", "r")
        rt.views.run_writes.put(key, {"metadata": {"resourceVersion": "7"}})
        rt.views.job_writes.put(key, {"metadata": {"resourceVersion": "8"}})
        rt.run_event("MODIFIED", key, {"metadata": {"resourceVersion": "7"}})
        rt.job_event("ADDED", key, {"metadata": {"resourceVersion": "8"}}, "sift-r")
        echoes_queued = len(rt.queue)
        assert rt.views.job_runs[("ns", "sift-r")] == "r"  # the Job is still mapped
        rt.run_event("MODIFIED", key, {"metadata": {"resourceVersion": "9"}})
        rt.job_event("MODIFIED", ("ns", "s"), {"metadata": {"resourceVersion": "8"}}, "sift-s")
        return [("echoes", str(echoes_queued)), ("changes", str(len(rt.queue)))]

    assert asyncio.run(main()) == [("echoes", "0"), ("changes", "2")]


def test_views_take_status_from_our_write_and_spec_from_the_index() -> None:
    cached = {"metadata": {"resourceVersion": "3"}, "spec": {"v": 2}, "status": {"phase": "A"}}
    views = Views({("ns", "r"): [cached]}, {}, {})
    views.run_writes.put(
        ("ns", "r"), {"metadata": {"resourceVersion": "4"}, "status": {"phase": "B"}}
    )
    run = views.run(("ns", "r"))
    assert run is not None
    assert run["status"] == {"phase": "B"}
    assert run["spec"] == {"v": 2}


def test_work_queue_collapses_bursts_and_never_loses_a_change() -> None:
    seen: list[str] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def handler(key: str) -> None:
            seen.append(key)
            if len(seen) == 1:
                await gate.wait()

        queue: WorkQueue[str] = WorkQueue(handler, workers=2)
        queue.start()
        for _ in range(5):
            queue.add("a")  # a burst: one reconcile
        await asyncio.sleep(0.01)
        queue.add("a")  # while "a" is being processed: once more afterwards
        queue.add("a")
        gate.set()
        queue.add_after("b", 0.02)
        queue.add_after("b", 5.0)  # the earlier timer wins
        await asyncio.sleep(0.1)
        await queue.stop()

    asyncio.run(main())
    assert seen == ["a", "a", "b"]


def test_work_queue_is_idle_only_when_nothing_waits_or_runs() -> None:
    states: list[bool] = []

    async def main() -> None:
        gate = asyncio.Event()

        async def handler(key: str) -> None:
            states.append(queue.idle.is_set())  # while a key is processed: busy
            await gate.wait()

        queue: WorkQueue[str] = WorkQueue(handler, workers=1)
        states.append(queue.idle.is_set())  # nothing yet: idle
        queue.start()
        queue.add("a")
        queue.add("b")
        states.append(queue.idle.is_set())
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.wait_for(queue.idle.wait(), 1)  # both done: idle again
        states.append(queue.idle.is_set())
        await queue.stop()

    asyncio.run(main())
    assert states == [True, False, False, False, True]


def test_events_wait_for_an_idle_queue_at_most_max_delay() -> None:
    run = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}

    async def main() -> None:
        kube = FakeKube()
        idle = asyncio.Event()  # a busy queue
        recorder = EventRecorder(kube, instance="t", idle=idle, max_delay=0.3)  # type: ignore[arg-type]
        recorder.post_soon(run, [("Normal", "JobCreated", "job r created")], NOW)
        await asyncio.sleep(0.05)
        assert kube.events == {}  # runs are waiting: the Event waits too
        idle.set()
        await recorder.flush()
        assert [e["reason"] for e in kube.events.values()] == ["JobCreated"]

        idle.clear()  # a queue that stays busy: the Event goes out after max_delay
        started = asyncio.get_running_loop().time()
        recorder.post_soon(run, [("Normal", "Started", "pod running")], NOW)
        await recorder.flush()
        waited = asyncio.get_running_loop().time() - started
        assert sorted(e["reason"] for e in kube.events.values()) == ["JobCreated", "Started"]
        assert 0.25 <= waited < 2.0

    asyncio.run(main())


def test_resolve_host_keeps_ip_literals() -> None:
    assert asyncio.run(resolve_host("127.0.0.1")) == ["127.0.0.1/32"]
    assert asyncio.run(resolve_host("::1")) == ["::1/128"]


class FakeKube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.events: dict[str, dict[str, Any]] = {}

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", obj["metadata"]["name"]))
        if obj["metadata"]["name"] in self.events:
            raise ApiError(409, "AlreadyExists", "exists", "POST", "/")
        self.events[obj["metadata"]["name"]] = obj
        return obj

    async def get(self, *args: Any) -> dict[str, Any] | None:
        return self.events.get(args[-1])

    async def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any], *_: Any) -> Any:
        self.calls.append(("patch", patch))
        self.events[obj["metadata"]["name"]].update(patch)
        return self.events[obj["metadata"]["name"]]


def _reconciler(resolver: Any, settings: OperatorSettings | None = None) -> Reconciler:
    return Reconciler(
        settings or OperatorSettings(),
        FakeKube(),  # type: ignore[arg-type]
        Views({}, {}, {}),
        EventRecorder(FakeKube(), instance="t"),  # type: ignore[arg-type]
        Options(),
        resolver,
    )


def _spec(**extra: Any) -> tuple[dict[str, Any], SelectionRunSpec]:
    spec = {
        "datasource": {"input": {"volume": {"path": "a"}}, "output": {"volume": {"path": "b"}}},
        "input": {"embeddings": {"model": "tiny"}},
        "selection": {"nSamples": 1},
        "report": {
            "api": {"url": "https://api.example.com", "tokenSecret": {"name": "t", "key": "k"}}
        },
        **extra,
    }
    run = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}, "spec": spec}
    return run, SelectionRunSpec.model_validate(spec)


def test_api_cidrs_are_resolved_once_pinned_or_reported_when_unresolvable() -> None:
    calls: list[str] = []

    async def resolver(host: str) -> list[str]:
        calls.append(host)
        return ["203.0.113.7/32"]

    async def failing(host: str) -> list[str]:
        raise OSError("no DNS here")

    async def main() -> None:
        rec = _reconciler(resolver)
        run, spec = _spec()
        assert await rec.api_cidrs(run, spec) == (["203.0.113.7/32"], [])
        assert await rec.api_cidrs(run, spec) == (["203.0.113.7/32"], [])
        assert calls == ["api.example.com"]  # cached
        pinned_run, pinned = _spec(egress={"apiCIDRs": ["198.51.100.0/24"]})
        assert await rec.api_cidrs(pinned_run, pinned) == (["198.51.100.0/24"], [])
        assert calls == ["api.example.com"]

        cidrs, problems = await _reconciler(failing).api_cidrs(run, spec)
        assert cidrs == []
        assert [p.reason for p in problems] == ["ApiHostUnresolved"]
        assert "api.example.com" in problems[0].message

    asyncio.run(main())


def test_spec_hash_ignores_suspend_only() -> None:
    base = {"selection": {"nSamples": 1}}
    assert spec_hash(base) == spec_hash({**base, "suspend": True})
    assert spec_hash(base) != spec_hash({"selection": {"nSamples": 2}})


def test_events_are_aggregated_by_count() -> None:
    kube = FakeKube()
    recorder = EventRecorder(kube, instance="op-1")  # type: ignore[arg-type]
    run = {"metadata": {"name": "r", "namespace": "ns", "uid": "u"}}

    async def main() -> None:
        await recorder.post(run, "Warning", "SecretNotFound", "Secret api does not exist", NOW)
        await recorder.post(run, "Warning", "SecretNotFound", "Secret api does not exist", NOW)
        await recorder.post(run, "Normal", "Accepted", "the spec is valid", NOW)
        # a restarted operator (empty memory) adds to the same Event
        fresh = EventRecorder(kube, instance="op-2")  # type: ignore[arg-type]
        await fresh.post(run, "Warning", "SecretNotFound", "Secret api does not exist", NOW)

    asyncio.run(main())
    counts = sorted((e["reason"], e["count"]) for e in kube.events.values())
    assert counts == [("Accepted", 1), ("SecretNotFound", 3)]
    event = next(e for e in kube.events.values() if e["reason"] == "Accepted")
    assert event["involvedObject"] == {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "name": "r",
        "namespace": "ns",
        "uid": "u",
    }
    assert event["reportingInstance"] == "op-1"


def test_the_operator_registers_no_change_detecting_handlers() -> None:
    # EventHandlersDiffBase skips kopf's per-event essence: valid only while this holds
    import kopf
    import sift_operator.main  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert len(list(registry._watching.get_all_handlers())) == 3
    assert len(list(registry._indexing.get_all_handlers())) == 3


def test_the_operator_runtime_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sift_operator.main, sift_operator.kube;"
        "heavy = {'torch', 'numpy', 'PIL'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_storage_cidrs_are_resolved_unless_pinned_and_unresolvable_hosts_are_named() -> None:
    async def resolver(host: str) -> list[str]:
        if host.endswith("bad.example.com"):
            raise OSError("NXDOMAIN")
        return ["203.0.113.9/32"]  # the endpoint and its virtual-host name

    def s3(endpoint: str) -> dict[str, Any]:
        return {"s3": {"bucket": "bkt", "endpoint": endpoint}}

    async def main() -> None:
        rec = _reconciler(resolver)
        run, spec = _spec(
            datasource={
                "input": s3("https://good.example.com"),
                "output": {"volume": {"path": "o"}},
            }
        )
        found = await rec.storage_cidrs(run, spec)
        assert (found.mode, found.cidrs, found.unresolved) == ("Resolved", ("203.0.113.9/32",), ())
        assert "good.example.com at the 1 address(es)" in storage_text(found)
        run, spec = _spec(
            datasource={"input": s3("https://bad.example.com"), "output": {"volume": {"path": "o"}}}
        )
        found = await rec.storage_cidrs(run, spec)
        assert (found.cidrs, found.unresolved) == ((), ("bad.example.com", "bkt.bad.example.com"))
        assert "cannot resolve bad.example.com, bkt.bad.example.com" in storage_text(found)
        run, spec = _spec(
            datasource={
                "input": s3("https://bad.example.com"),
                "output": {"volume": {"path": "o"}},
            },
            egress={"storageCIDRs": ["10.0.0.0/8"]},
        )
        assert (await rec.storage_cidrs(run, spec)).mode == "Pinned"
        run, spec = _spec()  # volumes only: no storage host
        found = await rec.storage_cidrs(run, spec)
        assert found.mode == "None"
        assert storage_text(found) == ""

    asyncio.run(main())


def test_operator_default_cidrs_pin_runs_that_pin_none() -> None:
    async def resolver(host: str) -> list[str]:
        raise AssertionError(f"no lookup expected, asked for {host}")

    settings = OperatorSettings(api_cidrs=("198.51.100.0/24",), storage_cidrs=("10.1.0.0/16",))

    async def main() -> None:
        rec = _reconciler(resolver, settings)
        run, spec = _spec(
            datasource={
                "input": {"s3": {"bucket": "bkt", "endpoint": "https://s3.example.com"}},
                "output": {"volume": {"path": "o"}},
            }
        )
        assert await rec.api_cidrs(run, spec) == (["198.51.100.0/24"], [])
        found = await rec.storage_cidrs(run, spec)
        assert (found.mode, found.cidrs) == ("Default", ("10.1.0.0/16",))
        assert "operator's default storage CIDRs" in storage_text(found)
        # the spec's own CIDRs still win
        run, spec = _spec(egress={"apiCIDRs": ["203.0.113.0/24"]})
        assert await rec.api_cidrs(run, spec) == (["203.0.113.0/24"], [])

    asyncio.run(main())


@pytest.mark.parametrize("bad", ["10.0.0.300/8", "not-a-cidr", "10.0.0.0/33"])
def test_default_cidrs_are_validated_by_name(bad: str) -> None:
    with pytest.raises(SettingsError, match=f"SIFT_STORAGE_CIDRS.*{re.escape(bad)}"):
        OperatorSettings.from_env({"SIFT_STORAGE_CIDRS": json.dumps([bad])})
