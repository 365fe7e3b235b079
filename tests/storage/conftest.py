"""Fixtures: moto S3, fake-gcs-server and Azurite on 127.0.0.1 (see storage_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from storage_servers import (
    AZURITE_ACCOUNT,
    InProcessMoto,
    Server,
    _process,
    azurite_blob,
    canary_s3_client,
    fake_gcs_binary,
    free_port,
    moto_process,
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Server]:
    with moto_process() as server:
        yield server


@pytest.fixture
def s3_client(moto_server: Server) -> Any:
    return canary_s3_client(moto_server.endpoint)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    data = tmp_path_factory.mktemp("gcs")
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


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    work = tmp_path_factory.mktemp("azurite")
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
        f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list",
        cwd=str(work),
    ):
        yield Server(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", port)


@pytest.fixture(scope="session")
def moto_inprocess() -> Iterator[InProcessMoto]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield InProcessMoto(f"http://{host}:{port}")
    finally:
        server.stop()
