"""GCS and Azure through the broker: `sift-worker run` in cluster mode on fake-gcs-server
and on Azurite, every URL from the broker (which alone holds the Secret), the artifacts
under <prefix><ns>/<name>/<uid>/, and no credential or signature in logs, status,
Events, ConfigMaps or outputs. Azurite enforces SAS, so it also shows that what the
broker hands out is scoped: read SAS for one input blob, create/write SAS for one
output blob, and a signature used for another blob is refused by Azurite itself."""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from azure.storage.blob import BlobServiceClient, ContainerClient
from brokerkit import BrokerThread, ReviewingServer, WorkerRun, run_worker_via_broker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.server import Kube
from sift_operator.broker.tls import BrokerTLS
from sift_operator.children.networkpolicy import storage_endpoints
from sift_worker.api.v1alpha1 import SelectionRunSpec
from sift_worker.broker_client import BrokerClient
from sift_worker.demo_data import generate_demo_dataset
from sift_worker.storage import OutsidePrefixError
from storage_servers import Server, azurite_process, fake_gcs_process

ROOT = Path(__file__).resolve().parents[2]
AZ_ACCOUNT = "siftcanary"
# signature parameters of GCS V4 URLs and Azure SAS: a value in a log is a leaked URL
URL_SECRETS = ("X-Goog-Signature", "X-Goog-Credential", "sig=")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {k: _b64(v) for k, v in data.items()},
    }


def _run(
    ns: str, name: str, backend: str, input_loc: dict[str, Any], output_loc: dict[str, Any]
) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns}
    doc["spec"]["datasource"] = {
        "input": {backend: input_loc, "credentialsSecret": f"{backend}-creds"},
        "output": {backend: output_loc, "credentialsSecret": f"{backend}-creds"},
    }
    doc["spec"]["selection"]["nSamples"] = 4
    return doc


def _demo(tmp: Path) -> tuple[Path, int]:
    demo = generate_demo_dataset(
        tmp / "demo", clusters=3, per_cluster=4, duplicates=1, corrupt=1, size=(64, 48)
    )
    files = sum(len(v) for v in demo.clusters.values()) + len(demo.duplicates) + len(demo.corrupt)
    return demo.root, files


def _leak_texts(kube: Kube, ns: str, run: WorkerRun, caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [run.logs, caplog.text, *run.worker_side]
    for plural in ("selectionruns", "events", "configmaps", "jobs"):
        texts.append(json.dumps(kube.list(plural, ns)))
    return texts


def _check_selection(keys: set[str], read: Any, prefix: str, files: int) -> None:
    assert keys, "nothing was written"
    assert all(k.startswith(prefix) for k in keys), keys
    for artifact in ("selection.csv", "embeddings.npy", "report.html", "run.json"):
        assert prefix + artifact in keys
    rows = read(prefix + "selection.csv").decode().strip().splitlines()[1:]
    assert sum(",true," in row for row in rows) == 4
    assert len(rows) == files  # every input object was listed through the broker


# --- GCS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with fake_gcs_process(tmp_path_factory.mktemp("gcs")) as server:
        yield server


def _service_account() -> tuple[dict[str, str], list[str]]:
    """A throwaway service-account key, and the canary strings that must never leak."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key_id = f"canary-gcs-key-{uuid.uuid4().hex}"
    info = {
        "type": "service_account",
        "project_id": "sift-test",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": "sift-broker@sift-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",  # never used: fake-gcs is anonymous
    }
    body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return info, [key_id, *body[1:-1]]  # every full base64 line of the private key


def test_worker_runs_on_gcs_through_the_broker_with_no_credential(
    broker: BrokerThread,
    tls: BrokerTLS,
    api: ReviewingServer,
    kube: Kube,
    gcs: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns, name = "gcs-ns", "demo"
    root, files = _demo(tmp_path)
    bucket = f"g-{uuid.uuid4().hex[:10]}"
    h = httpx.Client(base_url=gcs.endpoint)
    assert h.post("/storage/v1/b", json={"name": bucket}).status_code == 200
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = "cams/" + path.relative_to(root).as_posix()
        r = h.post(
            f"/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": key},
            content=path.read_bytes(),
        )
        assert r.status_code == 200, r.text
    info, canaries = _service_account()
    kube.create(_secret(ns, "gcs-creds", {"serviceAccount.json": json.dumps(info)}))
    # the operator's environment points its GCS client at the emulator; the worker gets
    # nothing but URLs (STORAGE_EMULATOR_HOST is no credential, and the worker never
    # opens a GCS client in cluster mode)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    doc = _run(
        ns,
        name,
        "gcs",
        {"bucket": bucket, "prefix": "cams/"},
        {"bucket": bucket, "prefix": "sift/"},
    )

    run = run_worker_via_broker(broker, tls, api, kube, doc, tmp_path, monkeypatch, capfd)

    prefix = f"sift/{ns}/{name}/{run.uid}/"
    listed = h.get(f"/storage/v1/b/{bucket}/o", params={"prefix": "sift/"}).json()
    keys = {item["name"] for item in listed.get("items", [])}

    def read(key: str) -> bytes:
        resp = h.get(f"/storage/v1/b/{bucket}/o/{quote(key, safe='')}", params={"alt": "media"})
        assert resp.status_code == 200, key
        return resp.content

    _check_selection(keys, read, prefix, files)
    outputs = [read(k) for k in sorted(keys)]
    h.close()
    texts = _leak_texts(kube, ns, run, caplog)
    for leak in (*canaries, run.token, "BEGIN PRIVATE KEY", *URL_SECRETS):
        for text in texts:
            assert leak not in text, leak[:20]
        for data in outputs:
            assert leak.encode() not in data, leak[:20]


# --- Azure ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """Azurite with an account of this test's own: its key is a fresh canary."""
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    with azurite_process(
        tmp_path_factory.mktemp("azurite"), AZ_ACCOUNT, f"{AZ_ACCOUNT}:{key}"
    ) as server:
        yield server, key


def _container(server: Server, key: str, name: str) -> ContainerClient:
    service = BlobServiceClient(
        server.endpoint, credential={"account_name": AZ_ACCOUNT, "account_key": key}
    )
    return service.create_container(name)


def test_worker_runs_on_azure_through_the_broker_with_scoped_sas(
    broker: BrokerThread,
    tls: BrokerTLS,
    api: ReviewingServer,
    kube: Kube,
    azure: tuple[Server, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, account_key = azure
    ns, name = "azure-ns", "demo"
    root, files = _demo(tmp_path)
    container_name = f"c-{uuid.uuid4().hex[:10]}"
    container = _container(server, account_key, container_name)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        container.upload_blob("cams/" + path.relative_to(root).as_posix(), path.read_bytes())
    container.upload_blob("private/other-team.jpg", b"not this run's")
    kube.create(_secret(ns, "azure-creds", {"accountKey": account_key}))
    loc = {"account": AZ_ACCOUNT, "container": container_name, "endpoint": server.endpoint}
    doc = _run(ns, name, "azure", {**loc, "prefix": "cams/"}, {**loc, "prefix": "sift/"})
    # the run's egress (NetworkPolicy ports, Cilium FQDNs) follows the endpoint
    spec = SelectionRunSpec.model_validate(doc["spec"])
    assert storage_endpoints(spec) == [("127.0.0.1", server.port)]

    run = run_worker_via_broker(broker, tls, api, kube, doc, tmp_path, monkeypatch, capfd)

    prefix = f"sift/{ns}/{name}/{run.uid}/"
    keys = {b.name for b in container.list_blobs(name_starts_with="sift/")}

    def read(key: str) -> bytes:
        return bytes(container.download_blob(key).readall())

    _check_selection(keys, read, prefix, files)
    outputs = [read(k) for k in sorted(keys)]

    # what the broker signs is scoped, and Azurite (which checks SAS) holds it to that
    (tmp_path / "probe-token").write_text(run.token)
    c = BrokerClient(
        broker.url,
        tmp_path / "probe-token",
        namespace=ns,
        name=name,
        verify=ssl.create_default_context(cadata=tls.ca_pem.decode()),
    )
    objects, _ = c.input_page(None, 5)
    sas_urls = [url.url for _, url in objects]
    with httpx.Client(timeout=10) as h:
        for info, url in objects:
            assert re.search(r"[?&]sp=r(&|$)", url.url)  # read only
            assert re.search(r"[?&]sr=b(&|$)", url.url)  # one blob, not the container
            assert h.get(url.url).content == read("cams/" + info.key)
        read_sas = objects[0][1]
        put = {"x-ms-blob-type": "BlockBlob"}
        # a read SAS cannot write its own blob
        assert h.put(read_sas.url, content=b"overwrite", headers=put).status_code == 403
        # nor read another blob (one outside the input prefix)
        other = read_sas.url.replace(
            f"/cams/{quote(read_sas.key, safe='/~')}?", "/private/other-team.jpg?"
        )
        assert other != read_sas.url
        assert h.get(other).status_code == 403
        [up] = c.sign_uploads(["probe/mine.txt"], ["text/plain"])
        sas_urls.append(up.url)
        assert re.search(r"[?&]sp=cw(&|$)", up.url)
        assert h.put(up.url, content=b"ok", headers={**up.headers}).status_code == 201
        assert read(prefix + "probe/mine.txt") == b"ok"
        # a write SAS reads nothing, and writes only the blob it was signed for: not
        # another key under the run's own prefix, not another run's folder, not the input
        assert h.get(up.url).status_code == 403
        for target in (
            f"{prefix}probe/other.txt",
            f"sift/{ns}/other-run/x/selection.csv",
            "cams/" + read_sas.key,
        ):
            forged = up.url.replace(f"/{prefix}probe/mine.txt?", f"/{target}?")
            assert forged != up.url
            assert h.put(forged, content=b"forged", headers=dict(up.headers)).status_code == 403
        written = {b.name for b in container.list_blobs()} - keys - {prefix + "probe/mine.txt"}
        assert written == {b for b in written if b.startswith(("cams/", "private/"))}
        assert read("cams/" + read_sas.key) != b"forged"
    # and the broker never signs an upload outside the output prefix
    for bad in ("../../cams/x.jpg", "/sift/other/x"):
        with pytest.raises(OutsidePrefixError):
            c.sign_uploads([bad])
    c.close()

    texts = _leak_texts(kube, ns, run, caplog)
    signatures = [re.search(r"sig=([^&]+)", u).group(1) for u in sas_urls]  # type: ignore[union-attr]
    for leak in (account_key, run.token, *signatures):
        for text in texts:
            assert leak not in text, leak[:12]
        for data in outputs:
            assert leak.encode() not in data, leak[:12]
    for text in (run.logs, caplog.text):
        assert "sig=" not in text
