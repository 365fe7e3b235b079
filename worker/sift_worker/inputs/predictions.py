"""Model predictions per sample, validated and packed into arrays for scoring.

Layout under ``<input>/<prefix>`` (see docs/inputs.md): ``schema.json`` names the task and the
classes; each sample has ``<sample id with .json as extension>``. Without a valid schema no
prediction can be checked, so every sample's predictions count as missing.

Detections are stored column-wise (one row per object, ``offsets`` marking each sample's rows)
because millions of small Python objects would cost far more memory than the arrays.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from sift_worker.inputs import (
    InputProblem,
    check_prefix,
    check_sample_ids,
    finite_float,
    json_type,
    missing_summary,
    read_json,
    sidecar_name,
)

Task = Literal["classification", "detection"]
SCHEMA_FILE = "schema.json"
# Probabilities must sum to 1 within this: loose enough for float16 or rounded output, tight
# enough to catch logits or sigmoid outputs, which would make every score meaningless.
SUM_TOLERANCE = 0.01


@dataclass(frozen=True, eq=False)
class Predictions:
    """Predictions row-aligned with the sample ids they were loaded for.

    ``present[i]`` says whether sample i has valid predictions. Classification fills
    ``probabilities`` (N, C) (NaN rows where absent). Detection fills the object columns: the
    objects of sample i are rows ``offsets[i]:offsets[i + 1]`` of ``boxes`` (x, y, width,
    height in pixels), ``object_classes`` (index into ``classes``), ``object_scores`` and
    ``object_probabilities`` ((M, C), NaN rows where an object has none; None when no object
    has any). Fields of the other task are empty.
    """

    task: Task
    classes: list[str]
    present: np.ndarray  # (N,) bool
    probabilities: np.ndarray  # classification (N, C) float64; detection (0, C)
    offsets: np.ndarray  # (N + 1,) int64; all zero for classification
    boxes: np.ndarray  # (M, 4) float64
    object_classes: np.ndarray  # (M,) int64
    object_scores: np.ndarray  # (M,) float64
    object_probabilities: np.ndarray | None = None  # (M, C) float64

    def __len__(self) -> int:
        return len(self.present)

    def object_rows(self, i: int) -> slice:
        """The rows of sample i's objects in the object columns."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def object_counts(self) -> np.ndarray:
        """(N,) int64 objects per sample (0 where absent)."""
        return np.diff(self.offsets)


def load_predictions(
    input_dir: Path, sample_ids: Sequence[str], prefix: str, task: Task
) -> tuple[Predictions, list[InputProblem]]:
    """Read ``<prefix>schema.json`` and each sample's predictions file.

    A missing file means no predictions for that sample (counted in one summary problem named
    ``predictions``); every invalid file is a problem and its sample counts as missing.
    """
    if task not in get_args(Task):
        raise ValueError(f"unknown predictions task {task!r}")
    check_sample_ids(sample_ids)
    n = len(sample_ids)
    problems: list[InputProblem] = []
    bad_prefix = check_prefix(prefix)
    classes: list[str] | None = None
    if bad_prefix is not None:
        problems.append(bad_prefix)
    else:
        schema_name = f"{prefix}{SCHEMA_FILE}"
        classes, reason = _read_schema(input_dir, schema_name, task)
        if reason is not None:
            problems.append(InputProblem(schema_name, reason))
    builder = _Builder(task, classes or [], n)
    if classes is not None:
        for i, sample_id in enumerate(sample_ids):
            name = sidecar_name(prefix, sample_id)
            if name == f"{prefix}{SCHEMA_FILE}":
                reason = f"sample {sample_id!r} maps onto {SCHEMA_FILE}; rename the image"
                problems.append(InputProblem(name, reason))
                continue
            file = read_json(input_dir, name)
            if file.problem is not None:
                problems.append(file.problem)
            elif file.found:
                value, reason = _parse(task, file.value, classes)
                if reason is not None:
                    problems.append(InputProblem(name, reason))
                else:
                    builder.add(i, value)
    predictions = builder.build()
    summary = missing_summary("predictions", n - int(predictions.present.sum()), n)
    if summary is not None:
        problems.append(summary)
    return predictions, problems


def _read_schema(input_dir: Path, name: str, task: Task) -> tuple[list[str] | None, str | None]:
    example = '{"task": "%s", "classes": ["car", "person"]}' % task  # noqa: UP031
    file = read_json(input_dir, name)
    if file.problem is not None:
        return None, file.problem.reason
    if not file.found:
        return None, f"missing; predictions need a schema such as {example}"
    schema = file.value
    if not isinstance(schema, dict):
        return None, f"expected a JSON object such as {example}, found {json_type(schema)}"
    found_task = schema.get("task")
    if found_task not in get_args(Task):
        return None, f"'task' must be 'classification' or 'detection', found {found_task!r}"
    if found_task != task:
        return None, f"'task' is {found_task!r} but the run's predictions.task is {task!r}"
    classes = schema.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        return None, "'classes' must be a list of non-empty class names"
    least = 2 if task == "classification" else 1
    if len(classes) < least:
        return None, f"'classes' needs at least {least} names for {task}"
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            return None, f"'classes' repeats {c!r}"
        seen.add(c)
    return list(classes), None


def _parse(task: Task, value: Any, classes: list[str]) -> tuple[Any, str | None]:
    if not isinstance(value, dict):
        return None, f"expected a JSON object, found {json_type(value)}"
    if task == "classification":
        if "probabilities" not in value:
            return None, "missing key 'probabilities'"
        return _probabilities(value["probabilities"], len(classes), "'probabilities'")
    return _detection(value, classes)


def _probabilities(value: Any, c: int, where: str) -> tuple[np.ndarray | None, str | None]:
    """A length-C probability vector, or why it is not one."""
    if not isinstance(value, list):
        return None, f"{where} must be a list of {c} numbers, found {json_type(value)}"
    if len(value) != c:
        return None, f"{where} has {len(value)} values, expected {c} (one per class in schema.json)"
    for j, v in enumerate(value):
        if type(v) not in (int, float):  # exact types: booleans are not probabilities
            return None, f"{where}[{j}] must be a number, found {json_type(v)}"
    try:
        p = np.asarray(value, dtype=np.float64)
    except OverflowError:
        p = np.full(c, np.inf)
    bad = ~np.isfinite(p)
    if bad.any():
        j = int(np.argmax(bad))
        return None, f"{where}[{j}] is not finite ({value[j]!r})"
    if (p < 0).any():
        j = int(np.argmax(p < 0))
        return None, f"{where}[{j}] is negative ({value[j]!r})"
    total = float(p.sum())
    if abs(total - 1.0) > SUM_TOLERANCE:
        return None, (
            f"{where} sum to {total:.6g}, expected 1 (within {SUM_TOLERANCE}); "
            "apply a softmax to logits"
        )
    return p, None


class _Objects:
    """One sample's validated detections, before they join the columns."""

    def __init__(self) -> None:
        self.boxes: list[float] = []  # 4 per object
        self.classes: list[int] = []
        self.scores: list[float] = []
        self.probabilities: list[tuple[int, np.ndarray]] = []  # (object, its C probabilities)


class _Builder:
    """Packs samples into the final arrays as they are read: per-sample numpy arrays or Python
    floats would cost several times the data for a million samples."""

    def __init__(self, task: Task, classes: list[str], n: int) -> None:
        self.task, self.classes = task, classes
        self.present = np.zeros(n, dtype=bool)
        c = len(classes)
        self.probabilities = np.full((n if task == "classification" else 0, c), np.nan)
        self.counts = np.zeros(n, dtype=np.int64)
        self.boxes, self.scores = array.array("d"), array.array("d")
        self.object_classes = array.array("q")
        self.probability_rows, self.object_probabilities = array.array("q"), array.array("d")

    def add(self, i: int, value: np.ndarray | _Objects) -> None:
        self.present[i] = True
        if isinstance(value, np.ndarray):
            self.probabilities[i] = value
            return
        first = len(self.scores)
        self.counts[i] = len(value.scores)
        self.boxes.extend(value.boxes)
        self.object_classes.extend(value.classes)
        self.scores.extend(value.scores)
        for k, p in value.probabilities:
            self.probability_rows.append(first + k)
            self.object_probabilities.extend(p.tolist())

    def build(self) -> Predictions:
        c = len(self.classes)
        offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=offsets[1:])
        object_probabilities = None
        if self.probability_rows:
            object_probabilities = np.full((len(self.scores), c), np.nan)
            rows = np.frombuffer(self.probability_rows, dtype=np.int64)
            given = np.frombuffer(self.object_probabilities, dtype=np.float64)
            object_probabilities[rows] = given.reshape(len(rows), c)
        return Predictions(
            task=self.task,
            classes=self.classes,
            present=self.present,
            probabilities=self.probabilities,
            offsets=offsets,
            boxes=np.array(self.boxes, dtype=np.float64).reshape(-1, 4),
            object_classes=np.array(self.object_classes, dtype=np.int64),
            object_scores=np.array(self.scores, dtype=np.float64),
            object_probabilities=object_probabilities,
        )


def _detection(value: dict[str, Any], classes: list[str]) -> tuple[_Objects | None, str | None]:
    if "objects" not in value:
        return None, "missing key 'objects' (use [] for an image without objects)"
    objects = value["objects"]
    if not isinstance(objects, list):
        return None, f"'objects' must be a list, found {json_type(objects)}"
    index = {name: k for k, name in enumerate(classes)}
    out = _Objects()
    for k, obj in enumerate(objects):
        reason = _object(obj, k, index, len(classes), out)
        if reason is not None:
            return None, reason
    return out, None


def _object(obj: Any, k: int, index: dict[str, int], c: int, out: _Objects) -> str | None:
    """Validate objects[k] and append it to ``out``; or say what is wrong with it."""
    where = f"objects[{k}]"
    if not isinstance(obj, dict):
        return f"{where} must be an object, found {json_type(obj)}"
    for field in ("box", "class", "score"):
        if field not in obj:
            return f"{where}: missing key {field!r}"
    box, reason = _box(obj["box"], where)
    if box is None:
        return reason
    cls, reason = _class(obj["class"], index, c, where)
    if cls is None:
        return reason
    score = finite_float(obj["score"])
    if score is None or not 0.0 <= score <= 1.0:
        return f"{where}.score must be a number from 0 to 1, found {_show(obj['score'])}"
    if obj.get("probabilities") is not None:
        p, reason = _probabilities(obj["probabilities"], c, f"{where}.probabilities")
        if p is None:
            return reason
        out.probabilities.append((k, p))
    out.boxes.extend(box)
    out.classes.append(cls)
    out.scores.append(score)
    return None


def _box(value: Any, where: str) -> tuple[list[float] | None, str | None]:
    numbers = [finite_float(v) for v in value] if isinstance(value, list) else []
    box = [v for v in numbers if v is not None]
    if len(box) != 4 or len(numbers) != 4:
        reason = f"{where}.box must be 4 finite numbers [x, y, width, height], found {_show(value)}"
        return None, reason
    x, y, w, h = box
    if x < 0 or y < 0:
        return None, f"{where}.box x and y must not be negative, found {_show(value)}"
    if w <= 0 or h <= 0:
        return None, f"{where}.box width and height must be positive, found {_show(value)}"
    return box, None


def _show(value: Any, limit: int = 60) -> str:
    """A value for a reason, cut short: a reason is one line of a CSV."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _class(value: Any, index: dict[str, int], c: int, where: str) -> tuple[int | None, str | None]:
    if isinstance(value, str):
        if value not in index:
            return None, f"{where}.class {_show(value)} is not one of the classes in schema.json"
        return index[value], None
    if type(value) is int:
        if not 0 <= value < c:
            return None, f"{where}.class index {value} is out of range 0..{c - 1}"
        return value, None
    reason = f"{where}.class must be a class name or an integer index, found {json_type(value)}"
    return None, reason
