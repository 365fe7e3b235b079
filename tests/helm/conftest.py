"""Fixtures of the chart tests: both Helm majors and checkov, installed once (tools.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # chart.py, tools.py, rbac_recorder.py
sys.path.insert(0, str(Path(__file__).parents[1] / "operator"))  # the KMock harness

from chart import Helm
from tools import checkov_binary, helm_binary


@pytest.fixture(scope="session", params=[3, 4], ids=["helm3", "helm4"])
def helm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    major: int = request.param
    return Helm(helm_binary(major), major, tmp_path_factory.mktemp(f"helm{major}-home"))


@pytest.fixture(scope="session")
def helm4(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """One Helm for tests whose point is not the Helm version (goldens, RBAC)."""
    return Helm(helm_binary(4), 4, tmp_path_factory.mktemp("helm4-only-home"))


@pytest.fixture(scope="session")
def checkov() -> Path:
    return checkov_binary()
