"""Kill the operator at any point and start it again: no duplicate Jobs, the status
converges, nothing is re-announced."""

from __future__ import annotations

import time

import pytest
from harness.cluster import Cluster, condition, selection_run

pytestmark = pytest.mark.slow

BATCH = [f"r{i:02d}" for i in range(30)]


def test_kill_mid_way_and_restart_converges_without_duplicates(cluster: Cluster, ns: str) -> None:
    c = cluster
    c.kube.create(selection_run("early", ns))
    early = c.wait_reason(ns, "early", "Running", "JobCreated", timeout=30)
    accepted_at = condition(early, "Accepted")["lastTransitionTime"]

    for name in BATCH:
        c.kube.create(selection_run(name, ns))
    # SIGKILL as soon as the batch's first Job exists: the rest is in flight
    c.kube.wait_for(
        lambda: any(c.job(ns, n) for n in BATCH),
        "a first Job of the batch",
        timeout=30,
        interval=0.01,
    )
    c.operator.kill()
    in_flight = sum(c.job(ns, n) is None for n in BATCH)

    # while it is down, the Job controller keeps going
    job0 = c.job(ns, "early")
    assert job0 is not None
    pod0 = c.ctl.create_pod(job0)
    c.ctl.run(job0, pod0)

    time.sleep(1.1)  # a restarted operator's "now" differs from the first one's
    c.operator.start()
    c.operator.wait_for_log("sift operator started", 30)
    for name in BATCH:
        c.wait_job(ns, name, timeout=30)
        c.wait_reason(ns, name, "Running", "JobCreated", timeout=30)
    early = c.wait_phase(ns, "early", "Running")

    jobs = c.kube.list("jobs", ns)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(
        f"sift-{n}" for n in ["early", *BATCH]
    )
    for job in jobs:
        owner = job["metadata"]["ownerReferences"][0]
        run = c.run(ns, owner["name"])
        assert run is not None
        assert owner["uid"] == run["metadata"]["uid"]
    # a condition that did not change keeps its transition time across the restart
    assert condition(early, "Accepted")["lastTransitionTime"] == accepted_at
    # no Event was posted twice
    events = c.events(ns)
    assert events
    assert all(e["count"] == 1 for e in events), [(e["reason"], e["count"]) for e in events]
    assert len([e for e in events if e["reason"] == "Started"]) == 1
    print(f"{in_flight} of {len(BATCH)} runs had no Job when the operator was killed")
