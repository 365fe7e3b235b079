"""``sift-operator run --namespace NS`` serves that namespace only."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness.cluster import selection_run, start_cluster

pytestmark = pytest.mark.slow


def test_a_namespaced_operator_leaves_other_namespaces_alone(tmp_path: Path) -> None:
    with start_cluster(tmp_path, args=("--namespace", "team-a")) as c:
        c.kube.create(selection_run("mine", "team-a"))
        c.kube.create(selection_run("theirs", "team-b"))
        c.wait_job("team-a", "mine")
        c.wait_reason("team-a", "mine", "Running", "JobCreated")
        time.sleep(1.0)
        assert c.job("team-b", "theirs") is None
        run = c.run("team-b", "theirs")
        assert run is not None
        assert "status" not in run
        # the operator only ever asked about its own namespace
        assert "namespaces/team-b" not in c.operator.logs()
