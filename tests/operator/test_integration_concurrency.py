"""The operator-wide limit of running runs: runs beyond it wait as Queued and start in
creation order; the decisions survive an operator restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.cluster import Cluster, condition, selection_run, start_cluster

pytestmark = pytest.mark.slow

NS = "limited"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp: Path = tmp_path_factory.mktemp("limited")
    with start_cluster(tmp, env={"SIFT_MAX_RUNNING_RUNS": "2"}) as c:
        yield c


def _suspended(c: Cluster, name: str) -> bool | None:
    job = c.job(NS, name)
    return None if job is None else bool(job["spec"].get("suspend"))


def _running(c: Cluster) -> set[str]:
    return {
        j["metadata"]["ownerReferences"][0]["name"]
        for j in c.kube.list("jobs", NS)
        if not j["spec"].get("suspend")
        and not any(
            x["type"] in ("Complete", "Failed") and x["status"] == "True"
            for x in j.get("status", {}).get("conditions", [])
        )
    }


def _restart(c: Cluster) -> None:
    """Kill and start the operator; return once it watches runs, Jobs and pods again.

    kopf lists each resource, then watches it. This emulator's watch starts from its
    own snapshot, not from the list's resourceVersion, so a run deleted between the two
    would stay in the operator's index (holding its slot) with no DELETED event: on a
    loaded CI machine that window reached past the 1.5 s this test used to wait."""
    served = {p: c.emulator.counts[("GET", p)] for p in ("selectionruns", "jobs", "pods")}
    c.operator.kill()
    c.operator.start()
    c.operator.wait_for_log("sift operator started", 30)
    c.kube.wait_for(
        lambda: all(c.emulator.counts[("GET", p)] >= n + 2 for p, n in served.items()),
        "the restarted operator's list and watch of runs, Jobs and pods",
    )


def test_runs_beyond_the_limit_wait_and_start_in_creation_order(limited: Cluster) -> None:
    c = limited
    for name in ("zulu", "yankee"):
        c.kube.create(selection_run(name, NS))
    c.kube.wait_for(lambda: _running(c) == {"zulu", "yankee"}, "zulu and yankee running")
    # waiting: xray first; later delta and alpha in the same second (the name decides)
    c.kube.create(selection_run("xray", NS))
    time.sleep(1.1)  # creationTimestamp has whole seconds
    c.emulator.creation_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for name in ("delta", "alpha"):
            c.kube.create(selection_run(name, NS))
    finally:
        c.emulator.creation_time = None
    for name in ("xray", "delta", "alpha"):
        c.wait_job(NS, name)
        run = c.wait_reason(NS, name, "Queued", "WaitingForSlot")
        assert run["status"]["phase"] == "Queued"
        assert _suspended(c, name) is True
    assert _running(c) == {"zulu", "yankee"}

    # zulu finishes: the oldest waiting run starts (xray, though its name sorts last)
    zulu = c.job(NS, "zulu")
    assert zulu is not None
    c.ctl.succeed(zulu, None)
    c.kube.wait_for(lambda: _suspended(c, "xray") is False, "xray admitted")
    c.wait_reason(NS, "xray", "Queued", "Admitted")
    time.sleep(0.5)
    assert _running(c) == {"yankee", "xray"}

    # yankee fails: alpha (tied with delta on time, first by name) starts
    yankee = c.job(NS, "yankee")
    assert yankee is not None
    c.ctl.fail(yankee, None)
    c.kube.wait_for(lambda: _suspended(c, "alpha") is False, "alpha admitted")
    time.sleep(0.5)
    assert _running(c) == {"xray", "alpha"}
    assert condition(c.run(NS, "delta"), "Queued")["reason"] == "WaitingForSlot"

    # a restarted operator decides the same from the API's objects: nobody else starts
    _restart(c)
    time.sleep(1.5)
    assert _running(c) == {"xray", "alpha"}
    assert _suspended(c, "delta") is True

    # deleting a running run frees its slot too
    c.kube.delete("selectionruns", NS, "alpha")
    c.kube.wait_for(lambda: _suspended(c, "delta") is False, "delta admitted")
    time.sleep(0.5)
    assert _running(c) == {"xray", "delta"}


def test_kueue_and_suspended_runs_take_no_slot(limited: Cluster) -> None:
    c = limited
    c.kube.create(selection_run("kueued", NS, worker={"queueName": "q"}))
    c.kube.create(selection_run("paused", NS, suspend=True))
    c.wait_reason(NS, "kueued", "Queued", "QueuedByKueue")
    c.wait_reason(NS, "paused", "Queued", "Suspended")
    # still exactly the two runs of the previous test hold the slots
    assert _running(c) == {"xray", "delta"}
