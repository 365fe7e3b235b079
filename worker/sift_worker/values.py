"""Per-sample values that strategies read, from metadata and predictions.

Metadata and predictions belong to files; frames and objects inherit their file's
values, except that an object has its own class and its own uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sift_worker.api.v1alpha1 import InputSpec, SelectionSpec
from sift_worker.inputs import InputProblem
from sift_worker.inputs.metadata import load_metadata
from sift_worker.inputs.predictions import Predictions
from sift_worker.inputs.scores import derive_values, object_uncertainty
from sift_worker.selection.types import value_key
from sift_worker.sources.samples import SampleRef

OBJECT_SCORES = frozenset({"entropy", "margin", "leastConfidence"})


class MissingInputError(ValueError):
    """A strategy reads an input the spec does not provide (e.g. scores without predictions)."""


def required_keys(selection: SelectionSpec) -> tuple[set[str], set[str], bool]:
    """(metadata keys, score names, whether the predicted class is needed) over all strategies."""
    keys: set[str] = set()
    scores: set[str] = set()
    needs_class = False
    for entry in selection.strategies:
        inp = entry.input
        if inp.type == "metadata" and inp.key:
            keys.add(inp.key)
        elif inp.type == "scores" and inp.score:
            scores.add(inp.score)
        elif inp.type == "predictions":
            needs_class = True
    return keys, scores, needs_class


def build_values(
    input_dir: Path,
    refs: Sequence[SampleRef],
    files: Sequence[str],
    spec: InputSpec,
    selection: SelectionSpec,
    predictions: Predictions | None,
) -> tuple[dict[str, np.ndarray], list[InputProblem]]:
    keys, scores, needs_class = required_keys(selection)
    problems: list[InputProblem] = []
    file_row = {f: i for i, f in enumerate(files)}
    rows = np.asarray([file_row[r.file] for r in refs], dtype=np.int64)
    values: dict[str, np.ndarray] = {}
    if keys:
        if spec.metadata is None:
            raise MissingInputError("spec.input.metadata: strategies read metadata but none is set")
        columns, meta_problems = load_metadata(input_dir, files, spec.metadata.prefix, keys)
        problems += meta_problems
        values.update({k: col[rows] for k, col in columns.items()})
    if scores or needs_class:
        if predictions is None:
            raise MissingInputError(
                "spec.input.predictions: strategies read predictions or scores but none are set"
            )
        derived, score_problems = derive_values(predictions, scores)
        problems += score_problems
        values.update({k: col[rows] for k, col in derived.items()})
        _per_object(values, refs, rows, predictions, scores)
    return values, problems


def _per_object(
    values: dict[str, np.ndarray],
    refs: Sequence[SampleRef],
    rows: np.ndarray,
    predictions: Predictions,
    scores: set[str],
) -> None:
    """Objects carry their own class and uncertainty instead of their image's."""
    if not refs or refs[0].box is None:
        return
    obj = np.asarray(
        [
            int(predictions.offsets[row]) + _object_index(r)
            for r, row in zip(refs, rows, strict=True)
        ],
        dtype=np.int64,
    )
    classes = np.asarray(predictions.classes, dtype=object)
    values[value_key("predictions")] = classes[predictions.object_classes[obj]]
    for name in scores & OBJECT_SCORES:
        values[value_key("scores", score=name)] = object_uncertainty(predictions, name)[obj]


def _object_index(ref: SampleRef) -> int:
    return int(ref.id.rsplit("#object=", 1)[1])
