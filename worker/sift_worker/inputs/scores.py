"""Per-sample scores derived from predictions, for uncertainty-driven (active learning) selection.

Every score is oriented so that higher means "more worth labelling" where that applies:
uncertainty scores are 0 for a confident prediction and grow with doubt. Definitions are in
docs/inputs.md; in short, for a probability vector p over C classes, p1 >= p2 its two largest:

- ``entropy``: -sum(p log p) / log C, from 0 (one-hot) to 1 (uniform);
- ``margin``: 1 - (p1 - p2), from 0 (p1 = 1) to 1 (a tie at the top);
- ``leastConfidence``: 1 - p1.

A detection object without probabilities is scored as the two-way distribution
[score, 1 - score]; a sample's uncertainty is the mean over its objects (NaN without objects).
Samples without predictions get NaN for every score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from sift_worker.inputs import InputProblem
from sift_worker.inputs.predictions import Predictions, Task

CLASS_PRESENCE = "classPresence."
SCORE_NAMES: tuple[str, ...] = (
    "entropy",
    "margin",
    "leastConfidence",
    "objectCount",
    "meanScore",
    CLASS_PRESENCE,  # prefix form: classPresence.<class name>
)
_DETECTION_ONLY = ("objectCount", "meanScore")


def score_problem(name: str, task: Task) -> str | None:
    """Why ``name`` is not a score for ``task`` predictions, or None: lets a run refuse a typo
    before any image is embedded."""
    if name.startswith(CLASS_PRESENCE):
        if name == CLASS_PRESENCE:
            return f"score {name!r} needs a class name: {CLASS_PRESENCE}<class>"
        return None
    if name not in SCORE_NAMES:
        known = ", ".join(n + "<class>" if n == CLASS_PRESENCE else n for n in SCORE_NAMES)
        return f"unknown score {name!r}; known scores: {known}"
    if name in _DETECTION_ONLY and task != "detection":
        return f"score {name!r} needs detection predictions, not {task}"
    return None


def derive_values(
    predictions: Predictions, scores: Iterable[str]
) -> tuple[dict[str, np.ndarray], list[InputProblem]]:
    """``{"scores:<name>": float64 (N,)}`` for each requested score plus ``predictions:class``.

    ``predictions:class`` is an object array: the argmax class (classification) or the most
    frequent class among a sample's objects (detection; ties go to the larger summed score,
    then the earlier class), None where a sample has no predictions or no objects. Raises
    ValueError for a name ``score_problem`` refuses; a class that the schema lacks is a
    problem and its column is all NaN.
    """
    names = list(dict.fromkeys(scores))
    for name in names:
        reason = score_problem(name, predictions.task)
        if reason is not None:
            raise ValueError(reason)
    values: dict[str, np.ndarray] = {"predictions:class": _predicted_class(predictions)}
    problems: list[InputProblem] = []
    n = len(predictions)
    for name in names:
        column = np.full(n, np.nan, dtype=np.float64)
        if name.startswith(CLASS_PRESENCE):
            cls = name[len(CLASS_PRESENCE) :]
            if cls in predictions.classes:
                column = _class_presence(predictions, predictions.classes.index(cls))
            else:
                known = ", ".join(predictions.classes) or "none: no valid schema.json"
                reason = f"class {cls!r} is not in the predictions' classes ({known})"
                problems.append(InputProblem(f"scores:{name}", reason))
        elif name == "objectCount":
            column[predictions.present] = predictions.object_counts()[predictions.present]
        elif name == "meanScore":
            column = _per_sample_mean(predictions, predictions.object_scores)
        elif predictions.task == "classification":
            rows = predictions.present
            column[rows] = _UNCERTAINTY[name](predictions.probabilities[rows])
        else:
            column = _per_sample_mean(predictions, object_uncertainty(predictions, name))
        values[f"scores:{name}"] = column
    return values, problems


def object_uncertainty(predictions: Predictions, name: str) -> np.ndarray:
    """(M,) per-object ``entropy``, ``margin`` or ``leastConfidence`` of detections: from the
    object's probabilities when given, else from [score, 1 - score]."""
    if name not in _UNCERTAINTY:
        raise ValueError(f"{name!r} is not an uncertainty score")
    scores = predictions.object_scores
    two_way = _UNCERTAINTY[name](np.stack([scores, 1.0 - scores], axis=1))
    probabilities = predictions.object_probabilities
    if probabilities is not None and len(scores):
        given = ~np.isnan(probabilities[:, 0])
        two_way[given] = _UNCERTAINTY[name](probabilities[given])
    return two_way


def _entropy(p: np.ndarray) -> np.ndarray:
    c = p.shape[1]
    if c < 2:
        return np.zeros(len(p))
    logs = np.log(np.where(p > 0, p, 1.0))
    return _unit(-(p * logs).sum(axis=1) / math.log(c))


def _margin(p: np.ndarray) -> np.ndarray:
    if p.shape[1] < 2:
        return np.zeros(len(p))
    top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return _unit(1.0 - (top[:, 1] - top[:, 0]))


def _least_confidence(p: np.ndarray) -> np.ndarray:
    return _unit(1.0 - p.max(axis=1, initial=0.0))


def _unit(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1]: probabilities summing to 1 only within SUM_TOLERANCE can overshoot."""
    out: np.ndarray = np.clip(x, 0.0, 1.0)
    return out


_UNCERTAINTY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "entropy": _entropy,
    "margin": _margin,
    "leastConfidence": _least_confidence,
}


def _object_samples(predictions: Predictions) -> np.ndarray:
    """(M,) the sample row of each object."""
    return np.repeat(np.arange(len(predictions)), predictions.object_counts())


def _per_sample_mean(predictions: Predictions, per_object: np.ndarray) -> np.ndarray:
    """Mean over each sample's objects; NaN for samples without predictions or objects."""
    n = len(predictions)
    counts = predictions.object_counts()
    sums = np.bincount(_object_samples(predictions), weights=per_object, minlength=n)
    out = np.full(n, np.nan, dtype=np.float64)
    some = counts > 0
    out[some] = sums[some] / counts[some]
    return out


def _class_presence(predictions: Predictions, cls: int) -> np.ndarray:
    out = np.full(len(predictions), np.nan, dtype=np.float64)
    present = predictions.present
    if predictions.task == "classification":
        out[present] = predictions.probabilities[present].argmax(axis=1) == cls
        return out
    hits = np.bincount(
        _object_samples(predictions)[predictions.object_classes == cls], minlength=len(out)
    )
    out[present] = hits[present] > 0
    return out


def _predicted_class(predictions: Predictions) -> np.ndarray:
    n, classes = len(predictions), predictions.classes
    out = np.empty(n, dtype=object)
    out[:] = None
    if predictions.task == "classification":
        rows = np.flatnonzero(predictions.present)
        if not rows.size:
            return out
        for i, k in zip(rows, predictions.probabilities[rows].argmax(axis=1), strict=True):
            out[i] = classes[k]
        return out
    if not len(predictions.object_classes):
        return out
    # Count (sample, class) pairs without an (N, C) table: C can be large.
    pair = _object_samples(predictions) * len(classes) + predictions.object_classes
    pairs, inverse = np.unique(pair, return_inverse=True)
    count = np.bincount(inverse)
    score = np.bincount(inverse, weights=predictions.object_scores)
    sample, cls = np.divmod(pairs, len(classes))
    order = np.lexsort((cls, -score, -count, sample))
    first = order[np.r_[True, sample[order][1:] != sample[order][:-1]]]
    for i, k in zip(sample[first], cls[first], strict=True):
        out[i] = classes[k]
    return out
