"""Golden files for the operator's pure builders, and the sample runs they are made from.

``SIFT_UPDATE_GOLDEN=1 pytest tests/operator`` rewrites the files; without it a test
fails on any difference, so a change to a rendered child or a status is always a
reviewed diff of a YAML file.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
UPDATE = os.environ.get("SIFT_UPDATE_GOLDEN") == "1"

# tests/k8s_schema.py (the test API server) when only tests/operator is collected
if str(HERE.parents[1]) not in sys.path:
    sys.path.append(str(HERE.parents[1]))

UID = "6f1c1b2e-0d7a-4e55-9a51-3b8f2f6c1d00"
CANARY = "CANARY-5ecr3t-7c0ken"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's run.yaml) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100, default_flow_style=False)


def assert_golden(name: str, obj: Any) -> None:
    """``obj`` rendered as YAML equals ``golden/<name>.yaml`` (or rewrites it when updating)."""
    path = HERE / f"{name}.yaml"
    text = dump(obj)
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"{path.name} missing: run SIFT_UPDATE_GOLDEN=1 pytest tests/operator"
    expected = path.read_text()
    assert text == expected, (
        f"{path.name} drifted from the builder; review the diff and, if intended, "
        "regenerate with SIFT_UPDATE_GOLDEN=1 pytest tests/operator"
    )


def goldens(prefix: str) -> set[str]:
    return {p.stem for p in HERE.glob(f"{prefix}*.yaml")}


def example(name: str = "full") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
    return doc


def as_stored(doc: dict[str, Any], *, generation: int = 1) -> dict[str, Any]:
    """A manifest as the API server hands it to the operator (server-set metadata)."""
    run = copy.deepcopy(doc)
    meta = run["metadata"]
    meta.setdefault("namespace", "ml-data")
    meta["uid"] = UID
    meta["generation"] = generation
    meta["resourceVersion"] = "4711"
    meta["creationTimestamp"] = "2026-12-01T10:00:00Z"
    return run


def minimal_spec() -> dict[str, Any]:
    return {
        "datasource": {
            "input": {"s3": {"bucket": "raw-frames", "prefix": "cams/"}},
            "output": {"s3": {"bucket": "curation", "prefix": "sift/"}},
        },
        "input": {"type": "images", "embeddings": {"model": "resnet18"}},
        "selection": {"nSamples": 100},
    }


def run_with(spec: dict[str, Any], name: str = "nightly", **meta: Any) -> dict[str, Any]:
    doc = {
        "apiVersion": "sift.dev/v1alpha1",
        "kind": "SelectionRun",
        "metadata": {"name": name, "namespace": "ml-data", **meta},
        "spec": spec,
    }
    return as_stored(doc)
