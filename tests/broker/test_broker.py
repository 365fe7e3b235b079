"""The broker against moto S3 and the KMock emulator (with TokenReview), over real TLS.

A run's token gets signed URLs for that run's input and output prefix only; another
run's token, another audience, an unknown token, a finished run and oversized bodies
are refused; the CA handed to the worker verifies the broker and another CA does not;
progress reports land in the run's status, rate-limited; no credential, token or
signed URL reaches a log, the status, an Event or a ConfigMap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from brokerkit import (
    AUDIENCE,
    BrokerThread,
    ReviewingServer,
    register_token,
    run_job,
    s3_run,
    s3_secret,
    worker_pod,
)
from harness.server import Kube
from sift_operator.broker import broker_tls
from sift_operator.broker.metrics import REQUESTS
from sift_operator.broker.tls import BrokerTLS, make_self_signed
from sift_operator.settings import OperatorSettings
from sift_worker.broker_client import BrokerClient, BrokerError, BrokerSigner, fetcher_for
from sift_worker.fetch import URL_REFRESHES, Fetcher, ObjectGoneError
from sift_worker.storage import OutsidePrefixError
from storage_servers import CANARY_KEY_ID, CANARY_SECRET, Server, canary_s3_client

LEAKS = (CANARY_SECRET, CANARY_KEY_ID, "X-Amz-Signature", "X-Amz-Credential", "tok-")
KEYS = ["a.jpg", "b.jpg", "c/d.jpg", "c/e.png", "f.jpg"]


def _s3(moto: Server) -> Any:
    return canary_s3_client(moto.endpoint)


class World:
    """One namespace with two runs (alpha, beta) on one bucket, and a token for each
    (bound to a pod of the run's Job, as the kubelet's projected tokens are)."""

    def __init__(self, api: ReviewingServer, kube: Kube, moto: Server, ns: str) -> None:
        self.api, self.kube, self.ns = api, kube, ns
        self.bucket = f"b-{uuid.uuid4().hex[:10]}"
        s3 = _s3(moto)
        s3.create_bucket(Bucket=self.bucket)
        for run in ("alpha", "beta"):
            for key in KEYS:
                s3.put_object(Bucket=self.bucket, Key=f"{run}/in/{key}", Body=f"{run}:{key}")
            s3.put_object(Bucket=self.bucket, Key=f"{run}/in/.sift/hidden", Body=b"h")
        self.s3 = s3
        kube.create(s3_secret(ns))
        self.uids: dict[str, str] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        for run in ("alpha", "beta"):
            made = kube.create(s3_run(ns, run, moto.endpoint, self.bucket))
            self.uids[run] = made["metadata"]["uid"]
        self.tokens = {run: self.token(f"sift-{run}") for run in ("alpha", "beta")}

    def pod(self, run: str, *, job: str | None = None, uid: str | None = None) -> dict[str, Any]:
        """A pod of run ``run``'s Job (or the Job ``job`` of that run), created in the API."""
        name = job or f"sift-{run}"
        if name not in self.jobs:
            self.jobs[name] = self.kube.create(run_job(self.ns, run, self.uids[run], name=name))
        return self.kube.create(worker_pod(self.jobs[name], run, uid or self.uids[run]))

    def token(
        self,
        sa: str,
        ns: str | None = None,
        audience: str = AUDIENCE,
        pod: dict[str, Any] | None = None,
    ) -> str:
        """A token of ServiceAccount ``sa``, bound to ``pod`` (default: a new pod of the
        run ``sift-<run>`` names, when that run is in this world)."""
        run = sa.removeprefix("sift-")
        if pod is None and ns in (None, self.ns) and run in self.uids:
            pod = self.pod(run)
        return register_token(self.api, ns or self.ns, sa, pod, audience)


@pytest.fixture
def world(api: ReviewingServer, kube: Kube, moto: Server, request: pytest.FixtureRequest) -> World:
    ns = request.node.name.lower().replace("_", "-")[:40]
    return World(api, kube, moto, ns)


def client(
    broker: BrokerThread, tls: BrokerTLS, tmp: Path, token: str, ns: str, run: str
) -> BrokerClient:
    path = tmp / f"token-{uuid.uuid4().hex[:6]}"
    path.write_text(token + "\n")
    ctx = ssl.create_default_context(cadata=tls.ca_pem.decode())
    return BrokerClient(broker.url, path, namespace=ns, name=run, verify=ctx)


def test_run_token_lists_signs_and_uploads_inside_its_prefixes(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    c = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    signer = BrokerSigner(c, output=True)
    keys, token, pages = [], None, 0
    while True:
        objs, token = c.input_page(token, 2)
        pages += 1
        keys += [info.key for info, _ in objs]
        for info, url in objs:
            assert url.method == "GET"
            assert f"/{world.bucket}/alpha/in/{info.key}" in url.url
        if token is None:
            break
    assert sorted(keys) == sorted(KEYS)
    assert pages >= 3
    assert signer.input.uri().endswith("alpha/in/")
    with Fetcher(signer.allowed_hosts()) as fetcher:
        for key in KEYS:
            [url] = signer.sign_inputs([key])
            assert fetcher.get_bytes(url) == f"alpha:{key}".encode()
        [put] = signer.sign_uploads(["report/run.json"], ["application/json"])
        fetcher.put_bytes(put, b'{"ok": true}')
        # reads under the output prefix (a checkpoint or outbox an earlier attempt wrote)
        [get] = signer.sign_output_reads(["report/run.json"])
        assert get.method == "GET"
        assert fetcher.get_bytes(get) == b'{"ok": true}'
    written = f"out/{world.ns}/alpha/{world.uids['alpha']}/report/run.json"
    assert world.s3.get_object(Bucket=world.bucket, Key=written)["Body"].read() == b'{"ok": true}'
    post = signer.sign_upload_post("frames/")
    assert post.key_prefix == f"out/{world.ns}/alpha/{world.uids['alpha']}/frames/"
    c.close()


def test_a_token_for_run_a_never_gets_a_url_for_run_b_or_outside_the_prefix(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    c = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "beta")
    calls = [
        lambda: c.input_page(None, 10),
        lambda: c.sign_inputs(["a.jpg"]),
        lambda: c.sign_uploads(["x.json"]),
        lambda: c.sign_output_reads(["report/state.json"]),
        lambda: c.sign_upload_post(""),
        lambda: c.locations(),
        lambda: c.report_progress("embedding", 1, 2),
    ]
    for call in calls:
        with pytest.raises(BrokerError) as err:
            call()
        assert err.value.status == 403
        assert "sift-alpha" in str(err.value)
    assert REQUESTS.labels("inputs_sign", "Forbidden")._value.get() >= 1
    c.close()
    own = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    for bad in ("../../beta/in/a.jpg", "/beta/in/a.jpg", "c/../../../beta/in/a.jpg", "a\\b", ""):
        with pytest.raises(OutsidePrefixError) as refused:
            own.sign_inputs([bad])
        assert "X-Amz" not in str(refused.value)
        with pytest.raises(OutsidePrefixError):
            own.sign_uploads([bad])
        with pytest.raises(OutsidePrefixError):
            own.sign_output_reads([bad])
    with pytest.raises(OutsidePrefixError):
        own.sign_upload_post("../")
    # a key that merely names another run's folder stays under alpha's own prefix
    [url] = own.sign_inputs(["beta/in/a.jpg"])
    assert f"/{world.bucket}/alpha/in/beta/in/a.jpg?" in url.url
    # another namespace's ServiceAccount of the same name is another identity
    other = client(
        broker, tls, tmp_path, world.token("sift-alpha", ns="elsewhere"), world.ns, "alpha"
    )
    with pytest.raises(BrokerError) as err:
        other.sign_inputs(["a.jpg"])
    assert err.value.status == 403
    own.close()
    other.close()


def test_wrong_audience_unknown_token_no_token_and_finished_runs_are_refused(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube
) -> None:
    api_audience = world.token("sift-alpha", audience="https://kubernetes.default.svc")
    for token in (api_audience, "tok-unknown"):
        c = client(broker, tls, tmp_path, token, world.ns, "alpha")
        with pytest.raises(BrokerError) as err:
            c.sign_inputs(["a.jpg"])
        assert err.value.status == 401
        assert err.value.kind == "Unauthenticated"
        c.close()
    with httpx.Client(verify=ssl.create_default_context(cadata=tls.ca_pem.decode())) as raw:
        url = f"{broker.url}/v1/runs/{world.ns}/alpha/hosts"
        assert raw.get(url).status_code == 401
        assert raw.get(url, headers={"Authorization": "Basic abc"}).status_code == 401
    # a finished run: nothing more is signed, even for its own token
    kube.patch(
        "selectionruns",
        world.ns,
        "beta",
        {"status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}},
        status=True,
    )
    c = client(broker, tls, tmp_path, world.tokens["beta"], world.ns, "beta")
    with pytest.raises(BrokerError) as err:
        c.sign_inputs(["a.jpg"])
    assert (err.value.status, err.value.kind) == (403, "RunInactive")
    kube.delete("selectionruns", world.ns, "beta")
    time.sleep(2.1)  # the broker's run-state cache
    with pytest.raises(BrokerError) as err:
        c.sign_inputs(["a.jpg"])
    assert err.value.status == 404
    c.close()


def test_body_limits_and_bad_requests(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {world.tokens['alpha']}"}
    base = f"{broker.url}/v1/runs/{world.ns}/alpha"
    with httpx.Client(verify=ssl.create_default_context(cadata=tls.ca_pem.decode())) as raw:
        big = json.dumps({"keys": ["k" * 100] * 1000})  # ~100 KB > 64 KiB
        resp = raw.post(f"{base}/inputs/sign", content=big, headers=headers)
        assert resp.status_code == 413
        assert resp.json()["error"]["kind"] == "BodyTooLarge"
        too_many = {"keys": [f"k{i}" for i in range(1001)]}
        assert raw.post(f"{base}/inputs/sign", json=too_many, headers=headers).status_code == 400
        assert raw.post(f"{base}/inputs/sign", content=b"{", headers=headers).status_code == 400
        bad_progress = {"stage": "x", "done": -1}
        assert raw.post(f"{base}/progress", json=bad_progress, headers=headers).status_code == 400
        assert raw.get(f"{base}/inputs?pageSize=5000", headers=headers).status_code == 400


def test_the_handed_ca_verifies_the_broker_and_another_ca_does_not(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    good = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    assert good.locations()["hosts"]
    good.close()
    other = make_self_signed(["127.0.0.1"])
    bad = client(broker, other, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    with pytest.raises(BrokerError) as err:
        bad.locations()
    assert err.value.kind == "Unreachable"
    bad.close()
    path = tmp_path / "t"
    path.write_text(world.tokens["alpha"])
    system = BrokerClient(broker.url, path, namespace=world.ns, name="alpha")  # system CAs
    with pytest.raises(BrokerError):
        system.locations()
    system.close()


def test_progress_lands_in_status_rate_limited_and_reviews_are_cached(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube
) -> None:
    c = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    reviews = broker.server.broker.reviewer.reviews if broker.server else 0
    patches_before = world.api.emulator.counts[("PATCH", "selectionruns")]
    for done in range(0, 41):
        c.report_progress("embedding", done, 40)
    assert broker.server is not None
    assert broker.server.broker.reviewer.reviews == reviews + 1  # one review for 41 requests

    def final() -> dict[str, Any] | None:
        run = kube.get("selectionruns", world.ns, "alpha") or {}
        progress = (run.get("status") or {}).get("progress")
        return progress if progress and progress.get("done") == 40 else None

    progress = kube.wait_for(final, "status.progress done=40", timeout=10)
    assert progress == {"stage": "embedding", "done": 40, "total": 40, "percent": 100}
    patches = world.api.emulator.counts[("PATCH", "selectionruns")] - patches_before
    assert 1 <= patches <= 4, patches  # 41 reports in well under 2 s, one write per 0.5 s
    c.close()


def test_no_secret_token_or_signed_url_in_logs_status_events_or_configmaps(
    broker: BrokerThread,
    tls: BrokerTLS,
    world: World,
    tmp_path: Path,
    kube: Kube,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    c = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    signer = BrokerSigner(c, output=True)
    urls = [u for _, u in c.input_page(None, 10)[0]]
    urls += signer.sign_uploads(["x.json"])
    with Fetcher(signer.allowed_hosts()) as fetcher:
        fetcher.get_bytes(urls[0])
        with pytest.raises(ObjectGoneError) as gone:
            fetcher.get_bytes(signer.sign_inputs(["missing.jpg"])[0])
    for refused in (
        lambda: c.sign_inputs(["../x"]),
        lambda: client(broker, tls, tmp_path, "tok-bad", world.ns, "alpha").sign_inputs(["a"]),
    ):
        with pytest.raises((OutsidePrefixError, BrokerError)) as err:
            refused()
        assert not any(leak in str(err.value) for leak in LEAKS)
    c.report_progress("selecting", 1, 1)
    time.sleep(0.7)
    out, errs = capfd.readouterr()
    texts = [caplog.text, out, errs, str(gone.value)]
    for plural in ("selectionruns", "events", "configmaps"):
        texts.append(json.dumps(kube.list(plural, world.ns)))
    tokens = list(world.tokens.values())
    for text in texts:
        for leak in (*LEAKS[:4], *tokens, *(u.url.split("?")[1] for u in urls)):
            assert leak not in text
    assert caplog.records  # the broker and fetcher did log (refusals, retries)
    c.close()


def test_the_fetcher_refreshes_expiring_urls_through_the_broker(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    c = client(broker, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
    signer = BrokerSigner(c, output=True)
    [old] = signer.sign_inputs(["a.jpg"])
    before = URL_REFRESHES._value.get()
    # a margin longer than the URLs' lifetime (120 s here): every use re-signs first
    with fetcher_for(signer, refresh_margin=timedelta(seconds=600)) as fetcher:
        assert fetcher.get_bytes(old) == b"alpha:a.jpg"
        [put] = signer.sign_uploads(["r.txt"], ["text/plain"])
        fetcher.put_bytes(put, b"r")
    assert URL_REFRESHES._value.get() == before + 2
    c.close()


def test_the_managed_ca_is_kept_in_a_secret_and_reused(broker: BrokerThread, kube: Kube) -> None:
    ns = "tls-" + uuid.uuid4().hex[:6]
    settings = OperatorSettings(namespace=ns, broker_tls_extra_names=("127.0.0.1",))
    first = broker.call(broker_tls(settings, broker.kube))
    again = broker.call(broker_tls(settings, broker.kube))
    assert again.ca_pem == first.ca_pem
    assert again.cert_pem == first.cert_pem
    secret = kube.get("secrets", ns, "sift-operator-broker-tls")
    assert secret is not None
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert "PRIVATE KEY" not in repr(first)


def test_a_request_that_outlives_the_timeout_gets_504(
    api: ReviewingServer, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    settings = OperatorSettings(broker_request_timeout_seconds=0.5)
    with BrokerThread(api.url, settings, tls) as slow:
        assert slow.server is not None
        broker_obj = slow.server.broker

        async def hang(*_: Any) -> Any:
            await asyncio.sleep(5)

        broker_obj.signers.signer = hang  # type: ignore[method-assign]
        c = client(slow, tls, tmp_path, world.tokens["alpha"], world.ns, "alpha")
        started = time.monotonic()
        with pytest.raises(BrokerError) as err:
            c.sign_inputs(["a.jpg"])
        assert (err.value.status, err.value.kind) == (504, "Timeout")
        assert time.monotonic() - started < 3
        c.close()


def test_a_volume_input_is_never_listed_from_the_operators_file_system(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube, moto: Server
) -> None:
    run = s3_run(world.ns, "vol", moto.endpoint, world.bucket)
    run["spec"]["datasource"]["input"] = {"volume": {"claimName": "data", "path": "/"}}
    world.uids["vol"] = kube.create(run)["metadata"]["uid"]
    c = client(broker, tls, tmp_path, world.token("sift-vol"), world.ns, "vol")
    for call in (lambda: c.input_page(None, 10), lambda: c.sign_inputs(["etc/passwd"])):
        with pytest.raises(OutsidePrefixError) as err:
            call()
        assert "broker signs object storage only" in str(err.value)
    [put] = c.sign_uploads(["selection.csv"])  # the S3 output is signed as usual
    assert f"/{world.bucket}/out/{world.ns}/vol/" in put.url
    c.close()


def test_the_tokens_pod_must_be_a_live_pod_of_the_runs_job(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path, kube: Kube
) -> None:
    def refused(token: str) -> str:
        c = client(broker, tls, tmp_path, token, world.ns, "alpha")
        with pytest.raises(BrokerError) as err:
            c.sign_inputs(["a.jpg"])
        c.close()
        assert (err.value.status, err.value.kind) == (403, "Forbidden"), err.value
        assert token not in str(err.value)
        return err.value.reason

    sa = "sift-alpha"
    other_job = world.pod("beta")
    assert "controlled by Job sift-beta, not by run alpha's Job" in refused(
        world.token(sa, pod=other_job)
    )
    real = world.pod("alpha")
    impostor = {**real, "metadata": {**real["metadata"], "uid": str(uuid.uuid4())}}
    assert "uid differs" in refused(world.token(sa, pod=impostor))
    gone = world.pod("alpha")
    gone_token = world.token(sa, pod=gone)
    kube.delete("pods", world.ns, gone["metadata"]["name"])
    assert "does not exist" in refused(gone_token)
    legacy = register_token(world.api, world.ns, sa, None)  # a token bound to no pod
    assert "not bound to a pod" in refused(legacy)
    earlier = world.pod("alpha", uid=str(uuid.uuid4()))  # a pod of an earlier run "alpha"
    assert "earlier run" in refused(world.token(sa, pod=earlier))
    done = world.pod("alpha")
    kube.patch(
        "pods", world.ns, done["metadata"]["name"], {"status": {"phase": "Succeeded"}}, status=True
    )
    assert "has finished" in refused(world.token(sa, pod=done))

    # the worker's pod and the report Job's pod of the same run are accepted
    for pod in (world.pod("alpha"), world.pod("alpha", job="sift-alpha-report")):
        c = client(broker, tls, tmp_path, world.token(sa, pod=pod), world.ns, "alpha")
        [url] = c.sign_inputs(["a.jpg"])
        assert f"/{world.bucket}/alpha/in/a.jpg?" in url.url
        c.close()


def test_pods_are_read_from_the_operators_index_before_the_api(
    api: ReviewingServer, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    job = run_job(world.ns, "alpha", world.uids["alpha"])
    indexed = worker_pod(job, "alpha", world.uids["alpha"])  # in the index only, not the API
    indexed["metadata"]["uid"] = str(uuid.uuid4())
    index = {(world.ns, "sift-alpha"): [indexed]}
    with BrokerThread(api.url, OperatorSettings(), tls, pods=index) as thread:
        assert thread.server is not None
        binding = thread.server.broker.pod_binding
        c = client(thread, tls, tmp_path, world.token("sift-alpha", pod=indexed), world.ns, "alpha")
        for _ in range(3):
            c.sign_inputs(["a.jpg"])
        assert binding.lookups == 0  # no pods GET: the index had it
        c.close()
        # a pod the index does not hold yet is read from the API, once per cache period
        c = client(thread, tls, tmp_path, world.token("sift-alpha"), world.ns, "alpha")
        for _ in range(3):
            c.sign_inputs(["a.jpg"])
        assert binding.lookups == 1
        c.close()


def test_a_pod_that_cannot_be_read_is_503_and_not_cached(
    broker: BrokerThread, tls: BrokerTLS, world: World, tmp_path: Path
) -> None:
    assert broker.server is not None
    binding = broker.server.broker.pod_binding
    real = binding.kube

    class Down:
        async def get(self, *_: Any) -> Any:
            raise ConnectionError("api down")

    c = client(broker, tls, tmp_path, world.token("sift-alpha"), world.ns, "alpha")
    binding.kube = Down()  # type: ignore[assignment]
    try:
        with pytest.raises(BrokerError) as err:
            c.sign_inputs(["a.jpg"])
    finally:
        binding.kube = real
    assert (err.value.status, err.value.kind) == (503, "Unavailable")
    assert "could not be read (ConnectionError)" in err.value.reason
    [url] = c.sign_inputs(["a.jpg"])  # the API is back: asked again, accepted
    assert url.method == "GET"
    c.close()
