"""Kill the operator at any point and start it again: no duplicate Jobs, the status
converges, nothing is re-announced."""

from __future__ import annotations

import time

import pytest
from harness.cluster import Cluster, condition, selection_run

pytestmark = pytest.mark.slow

RUNS = [f"r{i:02d}" for i in range(12)]


def test_kill_mid_way_and_restart_converges_without_duplicates(cluster: Cluster, ns: str) -> None:
    c = cluster
    for name in RUNS:
        c.kube.create(selection_run(name, ns))
    # kill it as soon as the first Job exists: the rest is in flight
    c.wait_job(ns, RUNS[0], timeout=20)
    c.operator.kill()
    first = c.wait_reason(ns, RUNS[0], "Running", "JobCreated")
    accepted_at = condition(first, "Accepted")["lastTransitionTime"]

    # while it is down, the Job controller keeps going
    job0 = c.job(ns, RUNS[0])
    assert job0 is not None
    pod0 = c.ctl.create_pod(job0)
    c.ctl.run(job0, pod0)

    time.sleep(1.1)  # a restarted operator's "now" differs from the first one's
    c.operator.start()
    c.operator.wait_for_log("sift operator started", 30)
    for name in RUNS:
        c.wait_job(ns, name)
        c.wait_run(
            ns,
            name,
            lambda r: condition(r, "Running").get("reason") in ("JobCreated", "PodsRunning"),
            "converged",
        )
    run0 = c.wait_phase(ns, RUNS[0], "Running")

    jobs = c.kube.list("jobs", ns)
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(f"sift-{n}" for n in RUNS)
    for job in jobs:
        owner = job["metadata"]["ownerReferences"][0]
        run = c.run(ns, owner["name"])
        assert run is not None
        assert owner["uid"] == run["metadata"]["uid"]
    # a condition that did not change keeps its transition time across the restart
    assert condition(run0, "Accepted")["lastTransitionTime"] == accepted_at
    # no Event was posted twice
    events = c.events(ns)
    assert events
    assert all(e["count"] == 1 for e in events), [(e["reason"], e["count"]) for e in events]
    started = [e for e in events if e["reason"] == "Started"]
    assert len(started) == 1
