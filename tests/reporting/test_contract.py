"""The contract: the checked-in OpenAPI document, and the receiver and client keeping to it.

Besides schemathesis's generated requests (test_schemathesis.py), these walk every
operation with the worker's real bodies: valid OpenAPI 3.1, every request body the worker
builds validates against the documented request schema, every response the receiver gives
(success and each documented error) has a documented status and validates against the
documented response schema.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from sift_worker.reporting import report_run
from sift_worker.reporting.openapi import openapi_yaml
from sift_worker.reporting.outbox import build_outbox
from sift_worker.reporting.receiver import ReceiverThread

from .conftest import CANARY_TOKEN, FAST, Finished

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "results-api.openapi.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    return loaded


def test_checked_in_document_matches_the_models() -> None:
    assert DOC_PATH.read_text() == openapi_yaml(), (
        "docs/results-api.openapi.yaml drifted from the payload models: regenerate with "
        "python -m sift_worker.reporting.openapi > docs/results-api.openapi.yaml"
    )


def test_document_is_valid_openapi_31(doc: dict[str, Any]) -> None:
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert all(p.startswith("/v1/") for p in doc["paths"])
    ops = {
        op["operationId"]
        for item in doc["paths"].values()
        for k, op in item.items()
        if k != "parameters"
    }
    assert ops == {"createRun", "getRun", "heartbeat", "putChunk", "completeRun"}


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    ref = schema["$ref"].replace("#/", "urn:doc#/")
    return jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)


def _request_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    op = doc["paths"][path][method.lower()]
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _check_response(doc: dict[str, Any], path: str, method: str, resp: httpx.Response) -> None:
    op = doc["paths"][path][method.lower()]
    assert str(resp.status_code) in op["responses"], (method, path, resp.status_code, resp.text)
    documented = op["responses"][str(resp.status_code)]
    if "content" in documented:
        schema = documented["content"]["application/json"]["schema"]
        _validator(doc, schema).validate(resp.json())
    else:
        assert resp.content == b""


TEMPLATE = {
    "create": ("/v1/runs/{runUid}", "PUT"),
    "chunk": ("/v1/runs/{runUid}/chunks/{index}", "PUT"),
    "complete": ("/v1/runs/{runUid}/complete", "POST"),
    "heartbeat": ("/v1/runs/{runUid}/heartbeats", "POST"),
    "get": ("/v1/runs/{runUid}", "GET"),
}


def _send(
    recv: ReceiverThread,
    doc: dict[str, Any],
    what: str,
    body: str | bytes | None,
    *,
    uid: str = "uid-1234",
    index: int = 0,
    token: str = CANARY_TOKEN,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    template, method = TEMPLATE[what]
    path = template.replace("{runUid}", uid).replace("{index}", str(index))
    hdrs = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if what == "chunk":
        hdrs["Idempotency-Key"] = f"{uid}.{index}.k"
    hdrs.update(headers or {})
    content = body.encode() if isinstance(body, str) else body
    resp = httpx.request(method, recv.url + path, content=content, headers=hdrs, timeout=10)
    _check_response(doc, template, method, resp)
    return resp


def test_every_operation_keeps_to_the_document(
    doc: dict[str, Any], receiver: ReceiverThread, finished: Finished
) -> None:
    run = finished.run(
        receiver.url, {"filenames": "plain", "embeddings": True, "metadata": ["weather"]}
    )
    outbox = build_outbox(run, finished.output, finished.input)
    bodies = {
        "create": outbox.create_body(),
        "chunk": outbox.chunk_body(0),
        "complete": outbox.complete_body(),
        "heartbeat": json.dumps({"stage": "embedding", "done": 3, "total": 12}),
    }
    for what, body in bodies.items():  # what the worker builds is what the document describes
        template, method = TEMPLATE[what]
        _validator(doc, _request_schema(doc, template, method)).validate(json.loads(body))

    # errors before the run exists
    assert _send(receiver, doc, "chunk", bodies["chunk"]).status_code == 404
    assert _send(receiver, doc, "get", None).status_code == 404
    assert _send(receiver, doc, "create", bodies["create"], token="wrong").status_code == 401
    assert _send(receiver, doc, "create", "{}").status_code == 400
    assert (
        _send(
            receiver, doc, "create", bodies["create"], headers={"Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    extra = json.loads(bodies["create"]) | {"thumbnail": "/9j/4AAQ"}
    assert _send(receiver, doc, "create", json.dumps(extra)).status_code == 400
    # the flow, gzipped as the worker sends it
    gz = {"Content-Encoding": "gzip"}
    assert (
        _send(
            receiver, doc, "create", gzip.compress(bodies["create"].encode()), headers=gz
        ).status_code
        == 201
    )
    assert _send(receiver, doc, "create", bodies["create"]).status_code == 200  # resumed
    other = json.loads(bodies["create"]) | {"samples": 99}
    assert _send(receiver, doc, "create", json.dumps(other)).status_code == 409
    assert _send(receiver, doc, "heartbeat", bodies["heartbeat"]).status_code == 204
    missing = _send(receiver, doc, "complete", bodies["complete"])
    assert missing.status_code == 409
    assert missing.json()["missingChunks"] == [0]
    assert _send(receiver, doc, "chunk", bodies["chunk"], index=1).status_code == 400  # index
    assert (
        _send(receiver, doc, "chunk", bodies["chunk"], headers={"Idempotency-Key": ""}).status_code
        == 400
    )
    assert (
        _send(
            receiver, doc, "chunk", gzip.compress(bodies["chunk"].encode()), headers=gz
        ).status_code
        == 201
    )
    assert _send(receiver, doc, "chunk", bodies["chunk"]).status_code == 200  # same key: no-op
    changed = json.loads(bodies["chunk"])
    changed["samples"][0]["selected"] = False
    changed["samples"][0].pop("rank")
    assert _send(receiver, doc, "chunk", json.dumps(changed)).status_code == 409
    assert _send(receiver, doc, "get", None).json() == {
        "runUid": "uid-1234",
        "status": "open",
        "receivedChunks": [0],
    }
    done = _send(receiver, doc, "complete", bodies["complete"])
    assert done.status_code == 200
    assert done.json()["status"] == "complete"
    assert receiver.store.chunk_indices("uid-1234") == [0]


def test_receiver_refuses_fields_the_share_settings_do_not_allow(
    doc: dict[str, Any], receiver: ReceiverThread, finished: Finished
) -> None:
    hashed = build_outbox(
        finished.run(receiver.url, {"filenames": "hashed"}), finished.output, finished.input
    )
    assert _send(receiver, doc, "create", hashed.create_body()).status_code == 201
    chunk = json.loads(hashed.chunk_body(0))
    for sample in chunk["samples"]:
        sample["filename"] = "cams/site-0/frame 000.jpg"  # plain names were not allowed
    resp = _send(receiver, doc, "chunk", json.dumps(chunk))
    assert resp.status_code == 400
    assert "not allowed by share" in resp.json()["message"]
    chunk = json.loads(hashed.chunk_body(0))
    chunk["samples"][0]["metadata"] = {"weather": "sunny"}
    assert _send(receiver, doc, "chunk", json.dumps(chunk)).status_code == 400
    assert receiver.store.chunk_indices("uid-1234") == []


def test_client_against_receiver_end_to_end(
    receiver: ReceiverThread, finished: Finished, token_env: dict[str, str]
) -> None:
    run = finished.run(receiver.url, {"filenames": "plain", "embeddings": True})
    result = report_run(run, finished.output, finished.input, env=token_env, retry=FAST)
    assert (result.reported, result.acked, result.chunks) == ("Reported", 1, 1)
    stored = receiver.store.chunk(run.metadata.uid or "", 0)
    assert stored is not None
    assert [s.filename for s in stored.samples] == finished.names
    assert receiver.store.completed("uid-1234")
    beats = (receiver.store.run_dir("uid-1234") / "heartbeats.jsonl").read_text().splitlines()
    assert json.loads(beats[0]) == {"stage": "reporting", "done": 0, "total": 1}
    # sending again does nothing: the state says complete
    again = report_run(run, finished.output, finished.input, env=token_env, retry=FAST)
    assert again.reported == "Reported"
    assert again.sent == 0
    assert [r["path"] for r in receiver.store.requests()].count("/v1/runs/uid-1234/chunks/0") == 1


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip-bomb"])
def test_oversized_bodies_are_refused(
    doc: dict[str, Any], receiver: ReceiverThread, gzipped: bool
) -> None:
    big = b'{"name":"' + b"a" * (9 * 1024 * 1024) + b'"}'
    body = gzip.compress(big) if gzipped else big
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    resp = _send(receiver, doc, "create", body, headers=headers)
    assert resp.status_code == 413
    assert receiver.store.run("uid-1234") is None
