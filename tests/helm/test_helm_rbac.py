"""The chart's RBAC equals what the operator does: every API request the real operator
makes (recorded against the emulated API while it serves runs through their life) is
allowed, and every permission is used by a recorded request or by a declared call that
the emulator cannot exercise (each with its reason and the code that makes it)."""

from __future__ import annotations

import inspect
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chart import NAMESPACE, Helm, Obj, of_kind, only
from harness.cluster import condition, selection_run
from harness.controller import JobController
from harness.operator import OperatorProcess
from harness.server import Kube
from rbac_recorder import Grant, RecordingServer, Request, grants

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Declared:
    """A call the emulated runs do not reach; ``source`` must still be in ``module``."""

    request: Request
    module: str
    source: str
    reason: str


def _declared(ns: str | None) -> list[Declared]:
    return [
        Declared(
            Request(None, "authentication.k8s.io", "tokenreviews", "create", None),
            "sift_operator.broker.auth",
            '"/apis/authentication.k8s.io/v1/tokenreviews"',
            "the broker authenticates each worker request by its projected token; "
            "the emulator has no TokenReview API",
        ),
        Declared(
            Request(ns, "sift.dev", "selectionruns", "get", "x"),
            "sift_operator.broker.runs",
            "self.kube.get(GROUP_VERSION, KIND, namespace, name)",
            "the broker reads the caller's run (its spec and uid) for each worker request",
        ),
        Declared(
            Request(ns, "", "pods", "get", "x"),
            "sift_operator.broker.auth",
            'self.kube.get("v1", "Pod", ident.namespace, ident.pod)',
            "the broker reads a token's pod that the operator's pod index does not hold yet "
            "(just created), to check that it is a pod of the run's Job",
        ),
        Declared(
            Request(ns, "", "events", "get", "x"),
            "sift_operator.handlers.eventing",
            'self.kube.get("v1", "Event"',
            "an Event that already exists (posted by another replica or before a "
            "restart) is read to count it up",
        ),
        Declared(
            Request(ns, "", "events", "patch", "x"),
            "sift_operator.handlers.eventing",
            "self.kube.merge_patch(ref, {",
            "a repeated Event is counted up (count, lastTimestamp)",
        ),
        Declared(
            Request(ns, "batch", "jobs", "get", "x"),
            "sift_operator.handlers.reconcile",
            'self.kube.get("batch/v1", "Job"',
            "after 409 AlreadyExists on the Job (created by an earlier reconcile that "
            "the watch has not shown yet) the existing Job is read",
        ),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _operator_command(objs: list[Obj]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The rendered Deployment's SIFT_* env and args, bound to 127.0.0.1 ports."""
    (container,) = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("SIFT_")}
    env.update(
        SIFT_BROKER_LISTEN_ADDRESS="127.0.0.1",
        SIFT_BROKER_PORT=str(_free_port()),
        SIFT_RESULTS_API_HOST="127.0.0.1",  # never resolve a real host in tests
        POD_NAME="sift-0",
    )
    args = []
    for arg in container["args"][1:]:  # after "run"
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={_free_port()}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{_free_port()}/healthz"
        args.append(arg)
    return env, (*args, "--metrics-address", "127.0.0.1")


def _exercise(kube: Kube, ns: str) -> None:
    """Runs through their life in ``ns``: a Secret reference, a Cilium policy, a run
    waiting for a slot (limit 1) that is admitted when the first succeeds."""
    ctl = JobController(kube)
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "api", "namespace": ns},
            "data": {"token": "c2VjcmV0"},
        }
    )
    report = {"api": {"url": "https://127.0.0.1", "tokenSecret": {"name": "api", "key": "token"}}}
    kube.create(selection_run("first", ns, report=report, egress={"mode": "cilium"}))
    first = kube.wait_for(lambda: kube.get("jobs", ns, "sift-first"), f"{ns}: first Job")
    kube.create(selection_run("second", ns))
    kube.wait_for(
        lambda: (
            condition(kube.get("selectionruns", ns, "second"), "Queued").get("reason")
            == "WaitingForSlot"
        ),
        f"{ns}: second waits for a slot",
    )
    ctl.succeed(first, None)
    kube.wait_for(
        lambda: (kube.get("jobs", ns, "sift-second") or {}).get("spec", {}).get("suspend") is False,
        f"{ns}: second admitted",
    )
    kube.wait_for(
        lambda: (
            condition(kube.get("selectionruns", ns, "first"), "Succeeded").get("status") == "True"
        ),
        f"{ns}: first succeeded",
    )


def _record(objs: list[Obj], namespaces: list[str], tmp: Path) -> set[Request]:
    env, args = _operator_command(objs)
    with RecordingServer() as server:
        kube = Kube(server.url)
        for peering in [*of_kind(objs, "ClusterKopfPeering"), *of_kind(objs, "KopfPeering")]:
            kube.create(peering)  # what `helm install` creates before the operator starts
        operator = OperatorProcess(
            server.write_kubeconfig(tmp / "kubeconfig.yaml"),
            tmp / "operator.log",
            env=env,
            args=args,
            standalone=False,  # the chart's args decide (--standalone or --peering)
        )
        try:
            operator.start()
            operator.wait_for_log("sift operator started", 30)
            for ns in namespaces:
                _exercise(kube, ns)
            time.sleep(0.5)  # events posted off the reconcile path
        finally:
            operator.stop()
            kube.close()
        return set(server.emulator.recorded)


SCENARIOS = {
    "cluster-wide": {"replicas": 2, "operator": {"maxRunningRuns": 1}},
    "namespaced": {"replicas": 2, "watchNamespaces": ["team-a"], "operator": {"maxRunningRuns": 1}},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rbac_equals_the_calls_the_operator_makes(
    helm4: Helm, scenario: str, tmp_path: Path
) -> None:
    values: dict[str, Any] = SCENARIOS[scenario]
    objs = helm4.render(values)
    namespaces = values.get("watchNamespaces") or ["team-a"]
    recorded = _record(objs, namespaces, tmp_path)
    sa = only(objs, "ServiceAccount")["metadata"]["name"]
    granted: list[Grant] = grants(objs, sa, NAMESPACE)

    missing = sorted(r for r in recorded if not any(g.allows(r) for g in granted))
    assert not missing, f"the operator made calls its RBAC does not allow: {missing}"

    declared = [d for ns in namespaces for d in _declared(ns)]
    for d in declared:  # a declaration whose code is gone is stale
        source = inspect.getsource(__import__(d.module, fromlist=["_"]))
        assert d.source in source, f"stale declared call {d.request}: {d.module} changed"
    used = recorded | {d.request for d in declared}
    unused = [g for g in granted if not any(g.allows(r) for r in used)]
    # resourceNames grants are matched by name; a declared call names no object
    unused = [g for g in unused if not (g.names is None and _declared_kind(g, declared))]
    assert not unused, f"permissions no call uses: {unused}"
    assert {r.resource for r in recorded} >= {
        "selectionruns",
        "selectionruns/status",
        "jobs",
        "pods",
        "serviceaccounts",
        "configmaps",
        "networkpolicies",
        "ciliumnetworkpolicies",
        "secrets",
        "events",
    }, "the scenario no longer reaches every kind of call"


def _declared_kind(g: Grant, declared: list[Declared]) -> bool:
    return any(
        (g.group, g.resource, g.verb) == (d.request.group, d.request.resource, d.request.verb)
        and (g.namespace is None or g.namespace == d.request.namespace)
        for d in declared
    )


def test_single_replica_rbac_is_the_ha_rbac_without_peering(helm4: Helm) -> None:
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        one = grants(helm4.render(values), "sift", NAMESPACE)
        two = grants(helm4.render({**values, "replicas": 2}), "sift", NAMESPACE)
        assert set(one) == {g for g in two if g.group != "kopf.dev"}
        assert set(one) != set(two)
