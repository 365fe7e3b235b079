"""docs/security.md: its example payloads come from the real reporting schema (drift-
tested), and every test file its threat table names exists."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from sift_worker.reporting.schema import (
    Chunk,
    FilenameMode,
    RunCreate,
    Sample,
    check_chunk,
    sample_fields,
    share_settings,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
UPDATE = os.environ.get("SIFT_UPDATE_GOLDEN") == "1"
BEGIN, END = "<!-- BEGIN generated: share payloads -->", "<!-- END generated -->"

# one selected sample with everything a run could know about it
FULL: dict[str, Any] = {
    "index": 0,
    "selected": True,
    "rank": 1,
    "status": "ok",
    "filename": "cams/front/000123.jpg",
    "filename_hash": "5f2b" + "0" * 60,
    "embedding": [0.012345, -0.5, 0.25],
    "metadata": {"weather": "rain", "split": "train"},
    "predictions": {"probabilities": [0.9, 0.1]},
}
SETTINGS: list[tuple[str, FilenameMode, bool, list[str], bool]] = [
    ("the default", "hashed", False, [], False),
    ("filenames: plain", "plain", False, [], False),
    ("filenames: none", "none", False, [], False),
    ("everything", "plain", True, ["weather", "split"], True),
]


def payloads() -> str:
    out = []
    for title, filenames, embeddings, metadata, predictions in SETTINGS:
        share = share_settings(filenames, embeddings, metadata, predictions)
        wire = {**Sample.model_validate(FULL).model_dump(by_alias=True, exclude_none=True)}
        allowed = sample_fields(share) | {"rank"}
        sample = Sample.model_validate({k: v for k, v in wire.items() if k in allowed})
        run = RunCreate(
            name="weekly-curation",
            namespace="ml-data",
            share=share,
            worker_version="0.1.0",
            samples=1,
            chunks=1,
            embedding_dim=3 if embeddings else None,
            prediction_task="classification" if predictions else None,
            classes=["car", "person"] if predictions else None,
        )
        chunk = Chunk(index=0, samples=[sample])
        assert check_chunk(chunk, run) == [], title  # the receiver would accept it
        dump = {
            "PUT /v1/runs/{runUid}": run.model_dump(by_alias=True, exclude_none=True),
            "PUT /v1/runs/{runUid}/chunks/0": chunk.model_dump(by_alias=True, exclude_none=True),
        }
        out.append(f"#### {title}\n\n```json\n{json.dumps(dump, indent=2)}\n```\n")
    return "\n".join(out)


def test_share_payloads_in_the_doc_match_the_schema() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    want = f"{head}{BEGIN}\n{payloads()}{END}{tail}"
    if UPDATE:
        DOC.write_text(want)
    assert text == want, "docs/security.md payloads drifted (SIFT_UPDATE_GOLDEN=1)"


def test_named_tests_exist() -> None:
    named = set(re.findall(r"`(tests/[\w/.-]+\.py)`", DOC.read_text()))
    assert len(named) >= 10
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
