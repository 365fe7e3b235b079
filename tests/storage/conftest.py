"""Fixtures: moto S3, fake-gcs-server and Azurite on 127.0.0.1 (see storage_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from storage_servers import (
    InProcessMoto,
    Server,
    azurite_process,
    canary_s3_client,
    fake_gcs_process,
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
    with fake_gcs_process(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with azurite_process(tmp_path_factory.mktemp("azurite")) as server:
        yield server


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
