"""Schemathesis against the checked-in OpenAPI document: the receiver keeps to it.

Every operation gets generated requests (valid and invalid); every default check runs:
no server errors, documented status codes, content types and headers, response bodies
that match their schemas, invalid data refused, auth enforced. One check is left out
where the contract has rules JSON Schema cannot state: "schema-valid data is accepted"
for chunks and complete, whose acceptance depends on the run created before (the path
index must be the body's and below the run's chunk count, the fields must be allowed by
the run's share settings, ``rank`` exactly on selected samples, every chunk received);
those 400/404/409 answers are documented, and test_contract.py covers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance
from sift_worker.reporting.receiver import ReceiverThread

from .conftest import CANARY_TOKEN

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "results-api.openapi.yaml"
schema = schemathesis.openapi.from_path(DOC_PATH)
CROSS_REQUEST = {"/v1/runs/{runUid}/chunks/{index}", "/v1/runs/{runUid}/complete"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverThread]:
    recv = ReceiverThread(tmp_path_factory.mktemp("schemathesis") / "store", CANARY_TOKEN).start()
    try:
        yield recv
    finally:
        recv.stop()


@schema.parametrize()
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_receiver_keeps_to_the_document(case: schemathesis.Case[Any], live: ReceiverThread) -> None:
    excluded = [positive_data_acceptance] if case.operation.path in CROSS_REQUEST else []
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {CANARY_TOKEN}"},
        excluded_checks=excluded,
    )
