"""Fixtures: the KMock emulator with TokenReview, moto S3, and the broker on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from brokerkit import BrokerThread, ReviewingServer
from harness.server import Kube
from sift_operator.broker.tls import BrokerTLS, make_self_signed
from sift_operator.settings import OperatorSettings
from storage_servers import Server, moto_process


@pytest.fixture(scope="session")
def moto() -> Iterator[Server]:
    with moto_process() as server:
        yield server


@pytest.fixture(scope="module")
def api() -> Iterator[ReviewingServer]:
    with ReviewingServer() as server:
        yield server


@pytest.fixture(scope="module")
def kube(api: ReviewingServer) -> Iterator[Kube]:
    client = Kube(api.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tls() -> BrokerTLS:
    return make_self_signed(["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def broker(api: ReviewingServer, tls: BrokerTLS) -> Iterator[BrokerThread]:
    settings = OperatorSettings(
        broker_progress_interval_seconds=0.5, broker_url_lifetime_seconds=120
    )
    with BrokerThread(api.url, settings, tls) as thread:
        yield thread
