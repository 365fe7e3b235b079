"""Faults during a whole `sift-worker run` on S3: a storage server that keeps answering
500 for one input object, or for one upload, fails the run naming that object, and no
result is written as complete (no run.json, the last artifact)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sift_worker.cli import EXIT_FAILED, main
from sift_worker.demo_data import DemoDataset, generate_demo_dataset
from storage_servers import (
    CANARY_SECRET,
    Server,
    canary_s3_client,
    set_canary_aws_env,
)

ROOT = Path(__file__).resolve().parents[2]
HOP = {"host", "content-length", "connection", "transfer-encoding"}


class FailingProxy:
    """Forwards to moto, but answers 500 to every request whose path ends with ``fail``."""

    def __init__(self, upstream: str) -> None:
        self.fail = "\0"
        self.failed = 0
        proxy = self
        client = httpx.Client(base_url=upstream, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.split("?")[0].endswith(proxy.fail):
                    proxy.failed += 1
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                resp = client.request(self.command, self.path, content=body, headers=headers)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_PUT = do_HEAD = do_POST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.client = client
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FailingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture
def proxy(moto_server: Server) -> Iterator[FailingProxy]:
    with FailingProxy(moto_server.endpoint) as p:
        yield p


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(
        tmp_path_factory.mktemp("faults"), clusters=2, per_cluster=4, duplicates=0, corrupt=0
    )


def _setup(proxy: FailingProxy, demo: DemoDataset, tmp: Path, out: dict[str, Any]) -> Path:
    s3 = canary_s3_client(proxy.endpoint)
    bucket = out.get("s3", {}).get("bucket") or f"in-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for path in sorted(demo.root.rglob("*.jpg")):
        s3.put_object(Bucket=bucket, Key="cams/" + path.name, Body=path.read_bytes())
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    inp = {"s3": {"bucket": bucket, "prefix": "cams/", "endpoint": proxy.endpoint}}
    doc["spec"]["datasource"] = {"input": inp, "output": out}
    doc["spec"]["selection"]["nSamples"] = 3
    path = tmp / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_canary_aws_env(monkeypatch)


def test_an_input_object_that_keeps_failing_fails_the_run_naming_it(
    proxy: FailingProxy,
    demo: DemoDataset,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    manifest = _setup(proxy, demo, tmp_path, {"volume": {"path": str(out)}})
    victim = sorted(p.name for p in demo.root.rglob("*.jpg"))[3]
    proxy.fail = "/cams/" + victim
    assert main(["run", str(manifest)]) == EXIT_FAILED
    err = capfd.readouterr().err
    assert f"cams/{victim}: GET failed after 6 attempts" in err
    assert "HTTP 500" in err
    # the Fetcher's 6, and the read-ahead's one attempt if it asked before the decoder
    assert proxy.failed in (6, 7)
    assert not (out / "run.json").exists()
    assert not (out / "selection.csv").exists()
    for leak in (CANARY_SECRET, "X-Amz-Signature", "X-Amz-Credential"):
        assert leak not in err


def test_an_upload_that_keeps_failing_leaves_no_run_json(
    proxy: FailingProxy,
    demo: DemoDataset,
    aws_env: None,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bucket = f"io-{uuid.uuid4().hex[:8]}"
    out = {"s3": {"bucket": bucket, "prefix": "res/", "endpoint": proxy.endpoint}}
    manifest = _setup(proxy, demo, tmp_path, out)
    proxy.fail = "/res/selection.csv"
    assert main(["run", str(manifest)]) == EXIT_FAILED
    err = capfd.readouterr().err
    assert f"s3://{bucket}/res/selection.csv: PUT failed after 6 attempts" in err
    s3 = canary_s3_client(proxy.endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="res/")["Contents"]}
    assert "res/run.json" not in keys  # run.json goes last: the output is not complete
    assert "res/checkpoint/manifest.json" in keys  # the embeddings are kept for a rerun
    for leak in (CANARY_SECRET, "X-Amz-Signature", "X-Amz-Credential"):
        assert leak not in err
