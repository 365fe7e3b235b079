"""HA: two replicas with kopf peering; one is active, the other takes over when it dies."""

from __future__ import annotations

import pytest
from harness.cluster import selection_run
from harness.operator import OperatorProcess
from harness.server import EmulatorServer, Kube

pytestmark = pytest.mark.slow

NS = "ha"


def _instances(kube: Kube, run: str) -> set[str]:
    return {
        e["reportingInstance"]
        for e in kube.list("events", NS)
        if e["involvedObject"]["name"] == run
    }


def test_one_replica_is_active_and_the_other_takes_over(tmp_path) -> None:
    with EmulatorServer() as srv:
        kube = Kube(srv.url)
        kube.create(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "sift"},
            }
        )
        kubeconfig = srv.write_kubeconfig(tmp_path / "kubeconfig.yaml")

        def replica(name: str, priority: int) -> OperatorProcess:
            return OperatorProcess(
                kubeconfig,
                tmp_path / f"{name}.log",
                env={"POD_NAME": name},
                args=("--peering", "sift", "--priority", str(priority)),
                standalone=False,
            )

        active, standby = replica("op-a", 200), replica("op-b", 100)
        try:
            active.start()
            active.wait_for_log("sift operator started", 30)
            standby.start()
            standby.wait_for_log("Pausing the watch-stream for selectionruns", 30)

            kube.create(selection_run("first", NS))
            kube.wait_for(lambda: kube.get("jobs", NS, "sift-first"), "the first Job")
            kube.wait_for(lambda: _instances(kube, "first"), "events of the first run")
            assert _instances(kube, "first") == {"op-a"}

            active.kill()  # no goodbye: the standby waits out the peer's lifetime
            standby.wait_for_log("Resuming operations after the pause", 30)
            kube.create(selection_run("second", NS))
            kube.wait_for(lambda: kube.get("jobs", NS, "sift-second"), "the second Job")
            kube.wait_for(lambda: _instances(kube, "second"), "events of the second run")
            assert _instances(kube, "second") == {"op-b"}
            assert kube.list("jobs", NS).__len__() == 2
        finally:
            active.stop()
            standby.stop()
            kube.close()
