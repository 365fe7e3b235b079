"""Canary: Secret values the operator can read never show up anywhere it writes."""

from __future__ import annotations

import base64
import json

import pytest
from harness.cluster import Cluster, selection_run

pytestmark = pytest.mark.slow

CANARY_TOKEN = "canary-token-7f3a9c1e5b"
CANARY_KEY = "CANARYAKIA0123456789"
CANARY_SECRET = "canary/secret+access/key=="


def _secret(ns: str, name: str, data: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def test_secret_values_never_leak_into_status_events_children_or_logs(
    cluster: Cluster, ns: str
) -> None:
    c = cluster
    c.kube.create(_secret(ns, "s3", {"accessKeyId": CANARY_KEY, "secretAccessKey": CANARY_SECRET}))
    c.kube.create(_secret(ns, "api", {"token": CANARY_TOKEN}))
    datasource = {
        "input": {"s3": {"bucket": "raw-frames", "prefix": "cams/"}, "credentialsSecret": "s3"},
        "output": {"s3": {"bucket": "curation"}, "credentialsSecret": "s3"},
    }
    spec = {
        "report": {
            "api": {"url": "https://127.0.0.1", "tokenSecret": {"name": "api", "key": "token"}}
        },
        "egress": {"storageCIDRs": ["198.51.100.0/24"]},
    }
    run = selection_run("canary", ns, **spec)
    run["spec"]["datasource"] = datasource
    c.kube.create(run)
    job = c.wait_job(ns, "canary")
    pod = c.ctl.create_pod(job)
    c.ctl.run(job, pod)
    c.wait_phase(ns, "canary", "Running")
    c.ctl.fail(job, pod, exit_code=1)
    c.wait_phase(ns, "canary", "Failed")

    written = {
        "status": c.run(ns, "canary"),
        "events": c.events(ns),
        "children": [
            c.kube.list(p, ns) for p in ("jobs", "configmaps", "serviceaccounts", "networkpolicies")
        ],
        "logs": c.operator.logs(),
    }
    text = json.dumps(written)
    for value in (CANARY_TOKEN, CANARY_KEY, CANARY_SECRET):
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in text
    # the checks were real: the operator did read these Secrets' keys
    assert c.emulator.counts[("GET", "secrets")] >= 2
