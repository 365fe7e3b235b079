"""Helpers of the broker tests: the KMock emulator with TokenReview, the broker in a thread,
run, pod and Secret objects (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import yaml

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent / "storage"), str(HERE.parent / "operator")]

from harness.emulator import SiftEmulator  # noqa: E402
from harness.server import EmulatorServer  # noqa: E402
from sift_operator.broker import BrokerServer, start_broker  # noqa: E402
from sift_operator.broker.auth import (  # noqa: E402
    POD_NAME_CLAIM,
    POD_UID_CLAIM,
    TOKENREVIEW_PATH,
    PodIndex,
)
from sift_operator.broker.tls import BrokerTLS  # noqa: E402
from sift_operator.kube import Connection  # noqa: E402
from sift_operator.kube import Kube as AsyncKube  # noqa: E402
from sift_operator.settings import OperatorSettings  # noqa: E402
from storage_servers import CANARY_KEY_ID, CANARY_SECRET  # noqa: E402

AUDIENCE = "sift.dev/broker"

# the emulator's per-request access lines are noise, and an in-process `sift-worker run`
# of an earlier test may have left a root handler on a stream pytest has closed since
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@attrs.define(kw_only=True)
class TokenReviewEmulator(SiftEmulator):
    """The emulator plus ``POST tokenreviews``: tokens the test registered, with audiences
    and (for a token bound to a pod, as the kubelet's projected ones are) the pod's name
    and uid, answered in ``user.extra`` as the API server does."""

    tokens: dict[
        str, tuple[str, tuple[str, ...]] | tuple[str, tuple[str, ...], Mapping[str, Any]]
    ] = attrs.field(factory=dict, init=False)
    reviews: list[dict[str, Any]] = attrs.field(factory=list, init=False)

    async def _handle(self, request: Any) -> Any:
        if str(request.url.path) == TOKENREVIEW_PATH and str(request.method.value) == "POST":
            return self._review(request.data)
        return await super()._handle(request)

    def _review(self, body: Any) -> Any:
        spec = (body or {}).get("spec") or {}
        self.reviews.append({"audiences": spec.get("audiences")})  # never the token
        wanted = tuple(spec.get("audiences") or ())
        found = self.tokens.get(str(spec.get("token")))
        status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
        if found is not None:
            username, audiences = found[0], found[1]
            pod: Mapping[str, Any] = found[2] if len(found) > 2 else {}  # type: ignore[misc]
            common = [a for a in wanted if a in audiences] if wanted else list(audiences)
            if common:
                user: dict[str, Any] = {"username": username, "groups": ["system:serviceaccounts"]}
                if pod:
                    meta = pod["metadata"]
                    user["extra"] = {POD_NAME_CLAIM: [meta["name"]], POD_UID_CLAIM: [meta["uid"]]}
                status = {"authenticated": True, "audiences": common, "user": user}
        answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}
        return aiohttp.web.json_response({**answer, "status": status}, status=201)


class ReviewingServer(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.emulator = TokenReviewEmulator()


@dataclass
class BrokerThread:
    """The broker (the operator's code) on its own event loop in a thread."""

    api_url: str
    settings: OperatorSettings
    tls: BrokerTLS
    pods: PodIndex | None = None  # the operator's pod index (None: pods read from the API)
    server: BrokerServer | None = None
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def __enter__(self) -> BrokerThread:
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker", daemon=True)
        self.thread.start()
        self.kube = AsyncKube(Connection(self.api_url, None, lambda: "operator-token"))
        self.server = self.call(
            start_broker(
                self.settings, self.kube, tls=self.tls, host="127.0.0.1", port=0, pods=self.pods
            )
        )
        return self

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.port}"

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.call(self.server.stop())
        self.call(self.kube.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(10)
        self.loop.close()


def s3_secret(namespace: str, name: str = "s3-creds") -> dict[str, Any]:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"accessKeyId": b64(CANARY_KEY_ID), "secretAccessKey": b64(CANARY_SECRET)},
    }


def s3_run(namespace: str, name: str, endpoint: str, bucket: str) -> dict[str, Any]:
    loc = {"bucket": bucket, "endpoint": endpoint, "region": "us-east-1"}
    return {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "datasource": {
                "input": {"s3": {**loc, "prefix": f"{name}/in/"}, "credentialsSecret": "s3-creds"},
                "output": {"s3": {**loc, "prefix": "out/"}, "credentialsSecret": "s3-creds"},
            },
            "input": {"type": "images", "embeddings": {"model": "tiny"}},
            "selection": {"nSamples": 2},
        },
    }


def register_token(
    api: ReviewingServer,
    namespace: str,
    service_account: str,
    pod: Mapping[str, Any] | None,
    audience: str = AUDIENCE,
) -> str:
    """A token the emulator's TokenReview accepts: ``service_account``'s, bound to ``pod``."""
    token = f"tok-{uuid.uuid4().hex}"
    user = f"system:serviceaccount:{namespace}:{service_account}"
    api.emulator.tokens[token] = (user, (audience,), pod) if pod else (user, (audience,))
    return token


def run_job(namespace: str, run: str, run_uid: str, *, name: str | None = None) -> dict[str, Any]:
    """A Job of run ``run`` (``sift-<run>`` unless ``name``), owned by the run."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name or f"sift-{run}",
            "namespace": namespace,
            "labels": {"sift.dev/run": run, "sift.dev/run-uid": run_uid},
            "ownerReferences": [
                {
                    "apiVersion": "sift.dev/v1alpha1",
                    "kind": "SelectionRun",
                    "name": run,
                    "uid": run_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "worker"}]}}},
    }


def worker_pod(
    job: Mapping[str, Any], run: str, run_uid: str, *, suffix: str = ""
) -> dict[str, Any]:
    """A pod as the Job controller makes it for ``job`` (an object with a uid), labelled
    for run ``run`` of uid ``run_uid``."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{suffix or uuid.uuid4().hex[:5]}",
            "namespace": meta["namespace"],
            "labels": {"sift.dev/run": run, "sift.dev/run-uid": run_uid, "job-name": meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta.get("uid") or str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"serviceAccountName": f"sift-{run}", "containers": [{"name": "worker"}]},
    }


@dataclass
class WorkerRun:
    """What a `sift-worker run` through the broker left: the run's uid, its token, the
    worker's stderr, and every value the worker side was given (env, manifest)."""

    uid: str
    token: str
    logs: str
    worker_side: list[str]


def run_worker_via_broker(
    broker: BrokerThread,
    tls: BrokerTLS,
    api: ReviewingServer,
    kube: Any,
    doc: dict[str, Any],
    tmp: Path,
    monkeypatch: Any,
    capfd: Any,
) -> WorkerRun:
    """Create the run ``doc`` (with its Job and pod), then run the real worker in cluster
    mode as the pod would: the ConfigMap's manifest, a token bound to the pod, the broker's
    CA, no storage credential in its environment. Asserts it exits 0."""
    from sift_worker.cli import EXIT_OK, main

    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    uid = kube.create(doc)["metadata"]["uid"]
    job = kube.create(run_job(ns, name, uid))
    token = register_token(api, ns, f"sift-{name}", kube.create(worker_pod(job, name, uid)))
    manifest = tmp / "run.yaml"
    manifest.write_text(yaml.safe_dump({**doc, "metadata": {**doc["metadata"], "uid": uid}}))
    (tmp / "token").write_text(token)
    (tmp / "ca.crt").write_bytes(tls.ca_pem)
    for var in [v for v in os.environ if v.startswith(("AWS_", "SIFT_", "AZURE_", "GOOGLE_"))]:
        monkeypatch.delenv(var)
    # nor could boto3 find any of the host's: no shared files, no instance metadata
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    env = {
        "SIFT_BROKER_URL": broker.url,
        "SIFT_BROKER_TOKEN_FILE": str(tmp / "token"),
        "SIFT_BROKER_CA_FILE": str(tmp / "ca.crt"),
        "SIFT_RUN_NAMESPACE": ns,
        "SIFT_RUN_NAME": name,
        "SIFT_RUN_UID": uid,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["run", str(manifest), "--log-format", "json"]) == EXIT_OK
    finally:  # the CLI configures the root logger for its process: undo it for later tests
        root.handlers[:] = handlers
        root.setLevel(level)
    worker_side = [manifest.read_text(), *os.environ.values()]
    logs = capfd.readouterr().err
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert records[-1]["message"].startswith("done: selected"), records[-1]
    return WorkerRun(uid, token, logs, worker_side)
