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
    (
        "datasource.input",
        {"s3": {"bucket": "raw"}, "credentialsSecret": "s3-reader"},
        "spec.datasource.input.credentialsSecret",
    ),
    (
        "datasource.output",
        {"gcs": {"bucket": "out"}, "credentialsSecret": "gcs-writer"},
        "spec.datasource.output.credentialsSecret",
    ),
    (
        "input",
        {
            "type": "videos",
            "embeddings": {"model": "tiny"},
            "metadata": {},
            "_report_share": {"metadata": ["w"]},
        },
        "spec.report.share",
    ),
    (
        "selection.datapool",
        {"name": "pool", "_output_azure": True},
        "spec.datasource.output.azure",
    ),
    (
        "datasource.input",
        {"volume": {"path": "x", "claimName": "pvc"}},
        "spec.datasource.input.volume.claimName",
    ),
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
    (
        "report",
        {"api": {"tokenSecret": {"name": "t", "key": "k"}}, "share": {"metadata": ["w"]}},
        "spec.report.share.metadata",
    ),
]


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    value = copy.deepcopy(value)
    if isinstance(value, dict) and value.pop("_input_s3", False):
        doc["spec"]["datasource"]["input"] = {"s3": {"bucket": "raw"}}
    if isinstance(value, dict) and value.pop("_output_azure", False):
        doc["spec"]["datasource"]["output"] = {"azure": {"account": "acct", "container": "out"}}
    if isinstance(value, dict) and "_report_share" in value:
        share = value.pop("_report_share")
        doc["spec"]["report"] = {"api": {"tokenSecret": {"name": "t", "key": "k"}}, "share": share}
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


SUPPORTED = [
    ("report", {"api": {"tokenSecret": {"name": "t", "key": "k"}}}),
    ("report", {"api": {"tokenSecret": {"name": "t", "key": "k"}}, "_output_azure": True}),
    (
        "report",
        {"api": {"tokenSecret": {"name": "t", "key": "k"}}, "share": {"filenames": "plain"}},
    ),
    ("input.metadata", {}),
    ("input.predictions", {"task": "detection"}),
    ("selection.removeDuplicates", {"maxDistance": 0.1}),
    ("selection.datapool", {"name": "pool"}),
    ("selection.strategies", []),
    ("datasource.input", {"s3": {"bucket": "raw", "prefix": "cams/"}}),
    ("datasource.input", {"gcs": {"bucket": "raw"}}),
    ("datasource.output", {"azure": {"account": "acct", "container": "out"}}),
    ("selection.removeDuplicates", {"maxDistance": 0.1, "_input_s3": True}),
    # object storage: every input type and the side files (copied to a staging folder)
    ("input", {"type": "videos", "embeddings": {"model": "tiny"}, "_input_s3": True}),
    ("input", {"embeddings": {"model": "tiny"}, "metadata": {}, "_input_s3": True}),
    (  # the report reads a bucket input's side files from their staged copies
        "input",
        {
            "embeddings": {"model": "tiny"},
            "metadata": {},
            "_input_s3": True,
            "_report_share": {"metadata": ["w"]},
        },
    ),
    (
        "input",
        {
            "type": "objects",
            "embeddings": {"model": "tiny"},
            "predictions": {"task": "detection"},
            "_input_s3": True,
        },
    ),
    (
        "selection.strategies",
        [
            {"input": {"type": "embeddings"}, "strategy": {"type": "diversity"}},
            {"input": {"type": "random"}, "strategy": {"type": "random", "seed": 3}},
            {
                "input": {"type": "metadata", "key": "w"},
                "strategy": {"type": "balance", "distribution": "uniform"},
            },
        ],
    ),
]


@pytest.mark.parametrize(
    ("path", "value"), SUPPORTED, ids=[f"{p}={str(v)[:30]}" for p, v in SUPPORTED]
)
def test_implemented_blocks_pass_the_gate(path: str, value: Any) -> None:
    assert unsupported_features(parse_manifest(_with(path, value))) == []


def test_user_embeddings_refused_for_videos() -> None:
    doc = _with("input", {"type": "videos", "embeddings": {"file": {"path": "e.npy"}}})
    problems = unsupported_features(parse_manifest(doc))
    assert problems == [
        "spec.input.embeddings.file: user embeddings are per image; videos and objects need a model"
    ]
