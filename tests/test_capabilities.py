"""Blocks a later release implements are refused by field path, never ignored."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sift_worker.capabilities import unsupported_features
from sift_worker.config import parse_manifest

BASE: dict[str, Any] = {
    "apiVersion": "sift.dev/v1alpha1",
    "kind": "SelectionRun",
    "metadata": {"name": "t"},
    "spec": {
        "datasource": {"input": {"volume": {"path": "in"}}, "output": {"volume": {"path": "out"}}},
        "input": {"embeddings": {"model": "tiny"}},
        "selection": {
            "nSamples": 3,
            "strategies": [{"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}}],
        },
    },
}

CASES = [
    ("datasource.input", {"s3": {"bucket": "raw"}}, "spec.datasource.input.s3"),
    ("datasource.output", {"gcs": {"bucket": "out"}}, "spec.datasource.output.gcs"),
    (
        "datasource.input",
        {"volume": {"path": "x", "claimName": "pvc"}},
        "spec.datasource.input.volume.claimName",
    ),
    ("input.type", "videos", "spec.input.type"),
    ("input.embeddings", {"train": {"epochs": 2}}, "spec.input.embeddings.train"),
    (
        "input.embeddings",
        {"model": "tiny", "weights": {"s3": {"bucket": "models", "key": "w"}}},
        "spec.input.embeddings.weights",
    ),
    (
        "input.embeddings",
        {"file": {"gcs": {"bucket": "embs", "key": "e.npy"}}},
        "spec.input.embeddings.file",
    ),
    ("input.metadata", {}, "spec.input.metadata"),
    ("input.predictions", {"task": "detection"}, "spec.input.predictions"),
    (
        "selection.strategies",
        [{"input": {"type": "random"}, "strategy": {"type": "random"}}],
        "spec.selection.strategies[0].strategy.type",
    ),
    ("selection.removeDuplicates", {"maxDistance": 0.1}, "spec.selection.removeDuplicates"),
    ("selection.datapool", {"name": "pool"}, "spec.selection.datapool"),
    ("report", {"api": {"tokenSecret": {"name": "t", "key": "k"}}}, "spec.report"),
]


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    node = doc["spec"]
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return doc


def test_base_is_fully_supported() -> None:
    assert unsupported_features(parse_manifest(copy.deepcopy(BASE))) == []


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[c[2] for c in CASES])
def test_not_supported_yet_names_the_field(path: str, value: Any, expected: str) -> None:
    problems = unsupported_features(parse_manifest(_with(path, value)))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_two_strategies_refused() -> None:
    entry = {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}}
    problems = unsupported_features(parse_manifest(_with("selection.strategies", [entry, entry])))
    assert problems == [
        "spec.selection.strategies: combining several strategies is not supported yet"
    ]
