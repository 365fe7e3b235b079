"""Fixtures for the operator's integration and end-to-end tests (harness/)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from harness.cluster import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An emulated cluster with one operator of default settings, shared by a module
    (each test works in its own namespace)."""
    with start_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own."""
    return re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:50]
