"""The results API's OpenAPI 3.1 document, generated from the payload models.

``python -m sift_worker.reporting.openapi > docs/results-api.openapi.yaml`` writes the
checked-in copy; a test fails when it drifts from the models.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sift_worker.reporting.receiver import MAX_BODY
from sift_worker.reporting.schema import (
    API_VERSION,
    Chunk,
    Complete,
    Error,
    Heartbeat,
    RunCreate,
    RunState,
)

MODELS: tuple[type[BaseModel], ...] = (RunCreate, RunState, Heartbeat, Chunk, Complete, Error)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "The body or a path parameter does not match the schema, or a chunk carries "
        "fields its run's share settings do not allow (`invalid_payload`). Not retried.",
        401: "Missing or wrong bearer token (`unauthorized`). Not retried.",
        404: "No such run (`not_found`): create it first. Not retried.",
        409: "Conflict (`conflict`): the run or chunk exists with other content, or (complete) "
        "chunks are missing (`missingChunks`). Not retried.",
        413: f"Body over {MAX_BODY} bytes, compressed or decompressed (`too_large`).",
        415: "Not `application/json`, or an encoding other than gzip/identity.",
        429: "Rate limited (`rate_limited`); the client waits `Retry-After` seconds, then retries.",
        503: "Unavailable (`unavailable`); any 5xx is retried with exponential backoff and jitter.",
    }
    out: dict[str, Any] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": text[code], "content": _json("Error")}
        if code == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds (or an HTTP date) to wait before retrying.",
                    "schema": {"type": "string"},
                }
            }
        out[str(code)] = entry
    return out


def _body(name: str, description: str) -> dict[str, Any]:
    return {"required": True, "description": description, "content": _json(name)}


UID = {
    "name": "runUid",
    "in": "path",
    "required": True,
    "description": "metadata.uid of the SelectionRun (a local run makes one and keeps it in "
    "its outbox).",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,64}$"},
}


def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in MODELS],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs.get("$defs", {})
    run_path = f"/{API_VERSION}/runs/{{runUid}}"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sift results API",
            "version": API_VERSION,
            "description": "What a Sift worker sends after a run's results are safe in the "
            "user's own storage: only what `spec.report.share` allows (docs/reporting.md). "
            "Request bodies are JSON, sent with `Content-Encoding: gzip` (identity is accepted "
            "too). Generated from worker/sift_worker/reporting/schema.py.",
        },
        "servers": [{"url": "https://api.lightly.ai"}],
        "security": [{"bearer": []}],
        "paths": {
            run_path: {
                "parameters": [UID],
                "put": {
                    "operationId": "createRun",
                    "summary": "Create the run, or resume it: idempotent on the run's uid.",
                    "description": "The same body again answers 200 with the chunks already "
                    "received, so a restarted worker sends only the rest. A different body "
                    "for an existing uid is a 409.",
                    "requestBody": _body("RunCreate", "The run and its share settings."),
                    "responses": {
                        "200": {"description": "Existed: resumed.", "content": _json("RunState")},
                        "201": {"description": "Created.", "content": _json("RunState")},
                        **_errors(400, 401, 409, 413, 415, 429, 503),
                    },
                },
                "get": {
                    "operationId": "getRun",
                    "summary": "The chunks received so far.",
                    "responses": {
                        "200": {"description": "The run.", "content": _json("RunState")},
                        **_errors(400, 401, 404, 429, 503),
                    },
                },
            },
            f"{run_path}/heartbeats": {
                "parameters": [UID],
                "post": {
                    "operationId": "heartbeat",
                    "summary": "The worker's stage and progress.",
                    "description": "Best effort, at most every few seconds, one attempt each; "
                    "may come before the run is created (its size is known only at the end).",
                    "requestBody": _body("Heartbeat", "Stage, done, total."),
                    "responses": {
                        "204": {"description": "Recorded."},
                        **_errors(400, 401, 413, 415, 429, 503),
                    },
                },
            },
            f"{run_path}/chunks/{{index}}": {
                "parameters": [
                    UID,
                    {
                        "name": "index",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**7},
                    },
                ],
                "put": {
                    "operationId": "putChunk",
                    "summary": "One chunk of samples; idempotent on its Idempotency-Key.",
                    "description": "The same key and body again answers 200 and stores nothing "
                    "twice; other content under a received index is a 409.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "description": "`<runUid>.<index>.<sha256 of the body, 32 hex>`.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        },
                    ],
                    "requestBody": _body("Chunk", "At most 1000 samples, about 4 MiB."),
                    "responses": {
                        "200": {"description": "Already had it.", "content": _json("RunState")},
                        "201": {"description": "Stored.", "content": _json("RunState")},
                        **_errors(400, 401, 404, 409, 413, 415, 429, 503),
                    },
                },
            },
            f"{run_path}/complete": {
                "parameters": [UID],
                "post": {
                    "operationId": "completeRun",
                    "summary": "Every chunk is sent; the run's counts.",
                    "requestBody": _body("Complete", "Chunk and sample counts, summary."),
                    "responses": {
                        "200": {"description": "Complete.", "content": _json("RunState")},
                        **_errors(400, 401, 404, 409, 413, 415, 429, 503),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from the Secret in spec.report.api.tokenSecret.",
                }
            },
            "schemas": schemas,
        },
    }


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def openapi_yaml() -> str:
    return yaml.dump(
        openapi_document(), Dumper=_NoAliases, sort_keys=False, width=100, allow_unicode=True
    )


if __name__ == "__main__":
    sys.stdout.write(openapi_yaml())
