"""Storage egress: the operator resolves the storage hosts at reconcile time (unless the
spec pins CIDRs), puts the addresses in the NetworkPolicy, and EgressRestricted says
which enforcement is in place."""

from __future__ import annotations

import pytest
from harness.cluster import Cluster, condition, selection_run

pytestmark = pytest.mark.slow


def _s3_run(ns: str, name: str, endpoint: str, **extra: object) -> dict[str, object]:
    run = selection_run(name, ns, **extra)
    run["spec"]["datasource"] = {  # type: ignore[index]
        "input": {"s3": {"bucket": "raw-frames", "endpoint": endpoint}},
        "output": {"volume": {"claimName": "data", "path": "out"}},
    }
    return run


def _storage_rule(policy: dict[str, object]) -> list[object]:
    return [
        rule
        for rule in policy["spec"]["egress"]  # type: ignore[index]
        if any("ipBlock" in peer for peer in rule["to"])
    ]


def test_storage_hosts_are_resolved_into_the_network_policy(cluster: Cluster, ns: str) -> None:
    c = cluster
    c.kube.create(_s3_run(ns, "local-s3", "http://127.0.0.1:9000"))
    c.kube.create(_s3_run(ns, "nowhere", "https://storage.invalid:9000"))
    c.kube.create(
        _s3_run(
            ns, "pinned", "https://storage.invalid:9000", egress={"storageCIDRs": ["10.9.0.0/16"]}
        )
    )
    for name in ("local-s3", "nowhere", "pinned"):
        c.wait_job(ns, name)

    policy = c.kube.get("networkpolicies", ns, "sift-local-s3")
    assert policy is not None
    (rule,) = _storage_rule(policy)
    assert rule["to"] == [{"ipBlock": {"cidr": "127.0.0.1/32"}}]  # type: ignore[index]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]  # type: ignore[index]
    run = c.wait_run(
        ns, "local-s3", lambda r: bool(condition(r, "EgressRestricted")), "egress condition"
    )
    message = condition(run, "EgressRestricted")["message"]
    assert "Storage: 127.0.0.1 at the 1 address(es)" in message

    # an unresolvable host: the run is not held back, the condition says what is missing
    policy = c.kube.get("networkpolicies", ns, "sift-nowhere")
    assert policy is not None
    assert _storage_rule(policy) == []
    run = c.wait_run(ns, "nowhere", lambda r: bool(condition(r, "EgressRestricted")), "egress")
    cond = condition(run, "EgressRestricted")
    assert cond["reason"] == "NetworkPolicy"
    assert "cannot resolve raw-frames.storage.invalid, storage.invalid" in cond["message"]

    # pinned CIDRs are used as they are; nothing is resolved
    policy = c.kube.get("networkpolicies", ns, "sift-pinned")
    assert policy is not None
    (rule,) = _storage_rule(policy)
    assert rule["to"] == [{"ipBlock": {"cidr": "10.9.0.0/16"}}]  # type: ignore[index]
    run = c.wait_run(ns, "pinned", lambda r: bool(condition(r, "EgressRestricted")), "egress")
    assert "pinned in spec.egress.storageCIDRs" in condition(run, "EgressRestricted")["message"]
