"""The workers' counters reach the operator's /metrics, each increase counted once.

Table tests for the accounting (``sift_operator.broker.worker_metrics``), then the real
broker over TLS (KMock with TokenReview, moto S3) with the real ``BrokerClient`` and
``BrokerProgress``: a worker's refusal by the egress guard moves the operator's
``sift_worker_egress_refused_total`` exactly once, through duplicates, a restarted pod
and a broker that forgot the run; the scraped text holds no token, credential, signed
URL, run name or uid.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokerkit import BrokerThread, ReviewingServer
from harness.server import Kube
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from sift_operator.broker import metrics as broker_metrics
from sift_operator.broker.tls import BrokerTLS
from sift_operator.broker.worker_metrics import (
    MetricsReportError,
    WorkerCounters,
    WorkerReport,
    parse_report,
)
from sift_operator.metrics import REGISTRY
from sift_worker import fetch
from sift_worker.broker_client import BrokerError, BrokerProgress
from sift_worker.fetch import EgressRefusedError, Fetcher
from sift_worker.metric_names import WORKER_COUNTERS
from sift_worker.storage import SignedURL
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server
from test_broker import World, client

S1, S2 = "session-one", "session-two"


def report(session: str, counters: dict[str, int], acked: dict[str, int] | None = None) -> Any:
    return {"session": session, "counters": counters, "acknowledged": acked or {}}


# --- the accounting, table-style -------------------------------------------------------

R, E, U = "fetch_retries", "egress_refused", "url_refreshes"
STEPS: list[tuple[str, dict[str, Any], dict[str, int]]] = [
    # (what, the metrics object, what it adds)
    ("first report", report(S1, {R: 3, E: 0}), {R: 3}),
    ("increase", report(S1, {R: 5, E: 1}), {R: 2, E: 1}),
    ("duplicate", report(S1, {R: 5, E: 1}), {}),
    ("retried after a lost answer", report(S1, {R: 6, E: 1}), {R: 1}),
    ("stale, reordered", report(S1, {R: 4, E: 1}), {}),
    ("after the stale one", report(S1, {R: 7, E: 1}), {R: 1}),
    ("restarted pod: lower, new session", report(S2, {R: 2}), {R: 2}),
    ("restarted pod: higher than the old pod", report(S2, {R: 9}), {R: 7}),
    ("a new counter", report(S2, {R: 9, U: 4}), {U: 4}),
]


def _exported() -> tuple[CollectorRegistry, dict[str, Counter]]:
    registry = CollectorRegistry()
    return registry, {n: Counter(f"t_{n}", n, registry=registry) for n in WORKER_COUNTERS}


def test_increase_table_first_increase_duplicate_restart() -> None:
    registry, export = _exported()
    counts = WorkerCounters(export)
    expected = dict.fromkeys(WORKER_COUNTERS, 0)
    for what, doc, adds in STEPS:
        added = counts.record("uid-1", parse_report(doc))
        assert {k: v for k, v in added.items() if v} == adds, what
        for name, amount in adds.items():
            expected[name] += amount
        now = {n: registry.get_sample_value(f"t_{n}_total") for n in WORKER_COUNTERS}
        assert now == expected, what
    assert expected == {R: 16, E: 1, "fetch_failures": 0, U: 4}


def test_a_broker_that_never_saw_the_run_counts_only_what_was_not_acknowledged() -> None:
    # another replica, a restarted operator, or the run's state forgotten after idling
    _, export = _exported()
    fresh = WorkerCounters(export)
    behind = parse_report(report(S1, {R: 10}, {R: 8}))
    assert fresh.record("uid-1", behind) == {R: 2}
    # the same report again (its answer was lost): the session is known now
    assert fresh.record("uid-1", behind) == {R: 0}
    # runs are kept apart
    assert fresh.record("uid-2", parse_report(report(S1, {R: 1}))) == {R: 1}


def test_idle_and_excess_runs_are_forgotten() -> None:
    clock = [0.0]
    _, export = _exported()
    counts = WorkerCounters(export, max_runs=3, idle_seconds=100, clock=lambda: clock[0])
    for i in range(3):
        counts.record(f"uid-{i}", parse_report(report(S1, {"fetch_retries": 1})))
        clock[0] += 10
    assert len(counts) == 3
    counts.record("uid-3", parse_report(report(S1, {"fetch_retries": 1})))
    assert len(counts) == 3  # over max_runs: the least recent (uid-0) went
    clock[0] += 95  # uid-1 (t=10) and uid-2 (t=20) idle for over 100 s now
    counts.record("uid-3", parse_report(report(S1, {"fetch_retries": 2})))
    assert len(counts) == 1


NONNEG = "metrics.counters.fetch_retries: must be a non-negative integer"
BAD: list[tuple[Any, str]] = [
    ([], "metrics: must be an object"),
    ({"counters": {}}, "metrics.session: must be 8..64"),
    (report("short", {}), "metrics.session: must be 8..64"),
    (report("has space in it", {}), "metrics.session"),
    ({**report(S1, {}), "extra": 1}, "metrics.extra: unknown field"),
    ({"session": S1}, "metrics.counters: must be an object"),
    (report(S1, {"bogus": 1}), "metrics.counters.bogus: not a known counter"),
    (report(S1, {R: -1}), NONNEG),
    (report(S1, {R: 1.5}), NONNEG),
    (report(S1, {R: True}), NONNEG),
    (report(S1, {R: "3"}), NONNEG),
    (report(S1, {R: 2**53}), NONNEG),
    (report(S1, {f"k{i}": 1 for i in range(5)}), "metrics.counters: at most 4 counters"),
    (report(S1, {R: 1}, {R: 2}), "metrics.acknowledged.fetch_retries: is above"),
    (report(S1, {}, {U: 1}), "metrics.acknowledged.url_refreshes: is above"),
    (report(S1, {"x" * 500: 1}), "metrics.counters." + "x" * 40 + "...: not a known"),
]


@pytest.mark.parametrize(("doc", "message"), BAD)
def test_bad_metrics_objects_name_the_field(doc: Any, message: str) -> None:
    with pytest.raises(MetricsReportError) as err:
        parse_report(doc)
    assert str(err.value).startswith(message), str(err.value)
    assert len(str(err.value)) < 200


def test_the_worker_reports_exactly_the_names_the_operator_exports() -> None:
    assert set(fetch.COUNTERS) == set(WORKER_COUNTERS) == set(broker_metrics.WORKER_COUNTERS)
    assert isinstance(parse_report(report(S1, fetch.counter_values())), WorkerReport)
    for name in WORKER_COUNTERS:  # the same series name on both sides
        assert broker_metrics.WORKER_COUNTERS[name]._name == fetch.COUNTERS[name]._name


# --- through the real broker -----------------------------------------------------------


@pytest.fixture(scope="module")
def scrape() -> Iterator[str]:
    """The operator's registry served the way ``sift-operator run --metrics-port`` does."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=REGISTRY)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(10)


def operator_values(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("sift_worker_") and sample.name.endswith("_total"):
                assert sample.labels == {}, sample  # no label per run
                name = sample.name.removeprefix("sift_worker_").removesuffix("_total")
                values[name] = sample.value
    assert set(values) == set(WORKER_COUNTERS), values
    return values


def refuse_egress() -> None:
    """One real refusal by the worker's egress guard (a host not on the allowlist)."""
    url = SignedURL("GET", "http://not-allowed.invalid/x?X-Amz-Signature=s", "x", _soon())
    with Fetcher(["127.0.0.1"]) as fetcher, pytest.raises(EgressRefusedError):
        fetcher.get_bytes(url)


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(minutes=5)


def wait(predicate: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def world(api: ReviewingServer, kube: Kube, moto: Server, request: pytest.FixtureRequest) -> World:
    ns = "wm-" + request.node.name.lower().replace("_", "-")[:36]
    return World(api, kube, moto, ns)


def test_a_worker_report_moves_the_operators_counters_exactly_once(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube, scrape: str
) -> None:
    assert broker.server is not None
    seen = broker.server.broker.worker_counters
    uid = world.uids["alpha"]
    before = operator_values(scrape)
    refuse_egress()  # before the reporter starts: not this run's (counted from its start)

    own = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    progress = BrokerProgress(own, interval=60)
    progress("embedding", 1, 4)  # a new stage: sent at once, with the counters (all 0)
    wait(lambda: progress.sent == 1, "the first report")
    assert seen._seen[uid].session == progress.session
    assert seen._seen[uid].values == dict.fromkeys(WORKER_COUNTERS, 0)
    refuse_egress()
    refuse_egress()
    progress.close()  # the final report carries the last values
    assert progress.sent == 2
    assert seen._seen[uid].values["egress_refused"] == 2
    after = operator_values(scrape)
    assert after["egress_refused"] - before["egress_refused"] == 2
    assert after["fetch_retries"] == before["fetch_retries"]

    # the same final report again (a retry whose first answer was lost): nothing added
    again = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    final = {"session": progress.session, "counters": seen._seen[uid].values, "acknowledged": {}}
    again.report_progress(None, metrics=final)
    assert operator_values(scrape) == after

    # a restarted pod: a new session from 0
    restarted = BrokerProgress(again, interval=60)
    refuse_egress()
    restarted.close()  # no progress since the start: the counters are sent alone
    assert restarted.sent == 1
    assert operator_values(scrape)["egress_refused"] == after["egress_refused"] + 1

    # a broker that forgot the run (or another replica): only what none acknowledged
    seen._seen.clear()
    third = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    third.report_progress(None, metrics={**final, "acknowledged": final["counters"]})
    assert operator_values(scrape)["egress_refused"] == after["egress_refused"] + 1
    third.close()

    # metrics-only reports left the status alone: the progress is the first report's
    run = kube.get("selectionruns", world.ns, "alpha") or {}
    assert run["status"]["progress"]["stage"] == "embedding"

    text = httpx.get(scrape, timeout=10).text
    secrets = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "not-allowed.invalid")
    for leak in (*secrets, *world.tokens.values(), progress.session, uid, world.ns, "alpha"):
        assert leak not in text, leak


def test_a_bad_metrics_body_gets_400_naming_the_field_and_changes_nothing(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube, scrape: str
) -> None:
    c = client(broker, tls, tmp_path, world.tokens["beta"], world.ns, "beta")
    before = operator_values(scrape)
    refused_before = broker_metrics.REQUESTS.labels("progress", "BadRequest")._value.get()
    patches = world.api.emulator.counts[("PATCH", "selectionruns")]
    for metrics, field in [
        (report(S1, {"bogus": 1}), "metrics.counters.bogus"),
        (report(S1, {"fetch_retries": -2}), "metrics.counters.fetch_retries"),
        (report(S1, {f"k{i}": 1 for i in range(50)}), "metrics.counters"),
        (report("bad session!", {"fetch_retries": 1}), "metrics.session"),
    ]:
        with pytest.raises(BrokerError) as err:
            c.report_progress("embedding", 1, 2, metrics=metrics)  # valid progress, bad metrics
        assert (err.value.status, err.value.kind) == (400, "BadRequest")
        assert field in err.value.reason
    with pytest.raises(BrokerError) as err:  # metrics do not make a bad stage acceptable
        c.call("POST", "/progress", {"stage": "", "metrics": report(S1, {"fetch_retries": 1})})
    assert "stage" in err.value.reason
    time.sleep(0.7)  # longer than the test broker's progress interval
    assert operator_values(scrape) == before
    assert world.api.emulator.counts[("PATCH", "selectionruns")] == patches
    refused = broker_metrics.REQUESTS.labels("progress", "BadRequest")._value.get()
    assert refused - refused_before == 5
    c.close()


def test_a_finished_runs_reports_are_refused_and_not_counted(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube, scrape: str
) -> None:
    done = {"status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}}
    kube.patch("selectionruns", world.ns, "beta", done, status=True)
    c = client(broker, tls, tmp_path, world.tokens["beta"], world.ns, "beta")
    before = operator_values(scrape)
    with pytest.raises(BrokerError) as err:
        c.report_progress(None, metrics=report(uuid.uuid4().hex, {"fetch_retries": 5}))
    assert err.value.kind == "RunInactive"
    assert operator_values(scrape) == before
    c.close()


def test_the_hot_path_reads_no_counter_and_close_sends_the_last_report(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube
) -> None:
    reads: list[int] = []

    def counters() -> dict[str, int]:
        reads.append(1)
        return fetch.counter_values()

    own = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    progress = BrokerProgress(own, interval=60, counters=counters)
    for done in range(20_000):  # one call per advanced sample
        progress("embedding", done, 40_000)
    wait(lambda: progress.sent == 1, "the first report (a new stage)")
    assert len(reads) == 2  # the reporter's start and the one report sent
    progress("embedding", 20_000, 40_000)  # same stage, not done: no report yet
    progress.close()
    assert (progress.sent, len(reads)) == (2, 3)  # the final report

    def last() -> Any:
        run = kube.get("selectionruns", world.ns, "alpha") or {}
        found = (run.get("status") or {}).get("progress") or {}
        return found if found.get("done") == 20_000 else None

    kube.wait_for(last, "the final progress in the status", timeout=10)


# --- a local run: --metrics-port -------------------------------------------------------


def test_a_local_run_can_serve_the_workers_registry() -> None:
    port, stop = fetch.serve_metrics(0)
    try:
        fetch.URL_REFRESHES.inc()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert {f"sift_worker_{n}_total" for n in WORKER_COUNTERS} <= names
        assert not any(n.startswith("sift_operator_") for n in names)
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_busy_metrics_port_is_a_clear_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging
    import socket

    from sift_worker.cli import EXIT_CONFIG, main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            code = main(["run", str(tmp_path / "never-read.yaml"), "--metrics-port", str(port)])
        finally:  # the CLI configures the root logger for its process: undo it
            root.handlers[:] = handlers
            root.setLevel(level)
    assert code == EXIT_CONFIG
    assert f"--metrics-port {port}: cannot listen: Address already in use" in capfd.readouterr().err
