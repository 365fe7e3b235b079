"""A real receiver on 127.0.0.1 (started and stopped per test) and a finished run's outputs.

The outputs are written the way ``sift-worker run`` writes them (``selection.csv``,
``embeddings.npy``/``.txt``, ``run.json``, metadata side files in the input), small and
fast; ``test_run_e2e.py`` also reports a real run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.config import parse_manifest
from sift_worker.outputs import write_embeddings
from sift_worker.reporting.client import RetryPolicy
from sift_worker.reporting.receiver import ReceiverThread

# Canaries: any of these in a payload, the outbox, the receiver's store, a log line or an
# exception is a leak.
CANARY_TOKEN = "sift-canary-token-8f3a9c1e5b7d"
CANARY_SIGNED_URL = (
    "https://raw-frames.s3.amazonaws.com/cams/a.jpg?X-Amz-Signature=canarysig0123456789abcdef"
)
CANARY_SECRET_VALUE = "canary-secret-metadata-value-Qz7"
FAST = RetryPolicy(attempts=5, budget=30.0, base=0.01, cap=0.05, max_retry_after=2.0)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverThread]:
    recv = ReceiverThread(tmp_path / "store", CANARY_TOKEN).start()
    try:
        yield recv
    finally:
        recv.stop()


@dataclass
class Finished:
    """A finished run: its manifest, input folder (side files) and output folder."""

    input: Path
    output: Path
    names: list[str]

    def run(
        self,
        api_url: str,
        share: dict[str, Any] | None = None,
        input_spec: dict[str, Any] | None = None,
        **meta: Any,
    ) -> SelectionRun:
        doc = {
            "apiVersion": "sift.dev/v1alpha1",
            "kind": "SelectionRun",
            "metadata": {"name": "weekly", "namespace": "ml-data", "uid": "uid-1234", **meta},
            "spec": {
                "datasource": {
                    "input": {"volume": {"path": str(self.input)}},
                    "output": {"volume": {"path": str(self.output)}},
                },
                "input": input_spec or {"embeddings": {"model": "tiny"}, "metadata": {}},
                "selection": {"nSamples": 3},
                "report": {
                    "api": {"url": api_url, "tokenSecret": {"name": "tok", "key": "token"}},
                    "share": share or {},
                },
            },
        }
        return parse_manifest(doc, "test manifest")


def make_finished(root: Path, n: int = 12, dim: int = 8) -> Finished:
    """Outputs of a run over ``n`` images, with metadata side files (one non-allowlisted)."""
    inp, out = root / "in", root / "out"
    names = [f"cams/site-{i % 3}/frame {i:03d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        meta = inp / ".sift" / "metadata" / (name.rsplit(".", 1)[0] + ".json")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            json.dumps(
                {
                    "weather": ["sunny", "rain"][i % 2],
                    "blur": i / n,
                    "owner_email": CANARY_SECRET_VALUE,  # never allowlisted in the tests
                    "source_url": CANARY_SIGNED_URL,
                }
            )
        )
    out.mkdir(parents=True)
    rows = ["filename,selected,rank,objective,distance_to_selection,status,duplicate_of"]
    for i, name in enumerate(names):
        if i < 3:
            rows.append(f'"{name}",true,{i + 1},0.5,0.000000,ok,')
        elif i == n - 1:
            rows.append(f'"{name}",false,,,,corrupt,')
        elif i == n - 2:
            rows.append(f'"{name}",false,,,0.1,excluded by threshold[1],')
        else:
            rows.append(f'"{name}",false,,,0.2,ok,')
    (out / "selection.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    write_embeddings(out, names[:-1], rng.normal(size=(n - 1, dim)).astype(np.float32))
    run_info = {
        "counts": {
            "listed": n,
            "decoded": n - 1,
            "corrupt": 1,
            "duplicates": 0,
            "pooled": 0,
            "selected": 3,
        },
        "selection": {"stopReason": "reached nSamples"},
    }
    (out / "run.json").write_text(json.dumps(run_info))
    return Finished(inp, out, names)


@pytest.fixture
def finished(tmp_path: Path) -> Finished:
    return make_finished(tmp_path / "run")


@pytest.fixture
def token_env() -> dict[str, str]:
    return {"SIFT_RESULTS_TOKEN": CANARY_TOKEN}
