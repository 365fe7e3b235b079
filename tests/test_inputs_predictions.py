"""Predictions and the scores derived from them, checked against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sift_worker.inputs import InputProblem, sidecar_name
from sift_worker.inputs.predictions import Predictions, Task, load_predictions
from sift_worker.inputs.scores import SCORE_NAMES, derive_values, score_problem

PREFIX = ".sift/predictions/"
SCHEMA = PREFIX + "schema.json"
CLASSES = ["car", "person", "truck"]
NAN = float("nan")


def _write(root: Path, name: str, content: Any) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")


def _setup(root: Path, task: str, files: dict[str, Any], classes: list[str] = CLASSES) -> None:
    _write(root, SCHEMA, {"task": task, "classes": classes})
    for sample_id, content in files.items():
        _write(root, sidecar_name(PREFIX, sample_id), content)


def _load(root: Path, ids: list[str], task: Task) -> tuple[Predictions, list[InputProblem]]:
    return load_predictions(root, ids, PREFIX, task)


def _close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, np.array(expected, dtype=np.float64), atol=1e-12)


# --- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (None, "missing; predictions need a schema such as"),
        ('{"task": "classification", ', "invalid JSON at line 1, column 28"),
        ([], "expected a JSON object such as"),
        ({"classes": CLASSES}, "'task' must be 'classification' or 'detection', found None"),
        ({"task": "detection", "classes": CLASSES}, "'task' is 'detection' but the run's"),
        ({"task": "classification", "classes": "car"}, "'classes' must be a list of non-empty"),
        ({"task": "classification", "classes": ["car", ""]}, "'classes' must be a list"),
        ({"task": "classification", "classes": ["car"]}, "'classes' needs at least 2 names"),
        ({"task": "classification", "classes": ["a", "b", "a"]}, "'classes' repeats 'a'"),
    ],
)
def test_bad_schema_makes_everything_missing(tmp_path: Path, schema: Any, reason: str) -> None:
    if schema is not None:
        _write(tmp_path, SCHEMA, schema)
    _write(tmp_path, sidecar_name(PREFIX, "a.jpg"), {"probabilities": [0.5, 0.5, 0.0]})
    predictions, problems = _load(tmp_path, ["a.jpg", "b.jpg"], "classification")
    assert problems[0].filename == SCHEMA
    assert problems[0].reason.startswith(reason)
    assert problems[1:] == [InputProblem("predictions", "missing for 2 of 2 samples")]
    assert predictions.present.tolist() == [False, False]
    assert predictions.probabilities.shape == (2, 0)
    values, _ = derive_values(predictions, ["entropy"])
    _close(values["scores:entropy"], [NAN, NAN])
    assert values["predictions:class"].tolist() == [None, None]


# --- classification ---------------------------------------------------------------------------


def test_classification(tmp_path: Path) -> None:
    _setup(
        tmp_path,
        "classification",
        {
            "a/uniform.jpg": {"probabilities": [1 / 3, 1 / 3, 1 / 3], "extra": "ignored"},
            "a/onehot.png": {"probabilities": [0, 1, 0]},
            "b.jpg": {"probabilities": [0.7, 0.2, 0.1]},
        },
    )
    ids = ["a/uniform.jpg", "a/onehot.png", "b.jpg", "missing.jpg"]
    predictions, problems = _load(tmp_path, ids, "classification")
    assert problems == [InputProblem("predictions", "missing for 1 of 4 samples")]
    assert predictions.classes == CLASSES
    assert predictions.present.tolist() == [True, True, True, False]
    assert predictions.probabilities.shape == (4, 3)
    _close(predictions.probabilities[2], [0.7, 0.2, 0.1])
    assert np.isnan(predictions.probabilities[3]).all()
    assert len(predictions) == 4
    assert predictions.object_counts().tolist() == [0, 0, 0, 0]

    values, problems = derive_values(
        predictions, ["entropy", "margin", "leastConfidence", "classPresence.person"]
    )
    assert problems == []
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    _close(values["scores:entropy"], [1.0, 0.0, h, NAN])
    _close(values["scores:margin"], [1.0, 0.0, 1 - (0.7 - 0.2), NAN])
    _close(values["scores:leastConfidence"], [2 / 3, 0.0, 0.3, NAN])
    _close(values["scores:classPresence.person"], [0.0, 1.0, 0.0, NAN])
    # A three-way tie goes to the first class.
    assert values["predictions:class"].tolist() == ["car", "person", "car", None]
    assert values["scores:entropy"].dtype == np.float64


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[0.5, 0.5, 0]", "expected a JSON object, found a list"),
        ({"probs": [1, 0, 0]}, "missing key 'probabilities'"),
        ({"probabilities": "0.5"}, "'probabilities' must be a list of 3 numbers, found a string"),
        ({"probabilities": [0.5, 0.5]}, "'probabilities' has 2 values, expected 3 (one per class"),
        ({"probabilities": [1, "0", 0]}, "'probabilities'[1] must be a number, found a string"),
        ({"probabilities": [True, 0, 0]}, "'probabilities'[0] must be a number, found a boolean"),
        ('{"probabilities": [0.5, NaN, 0.5]}', "'probabilities'[1] is not finite (nan)"),
        ({"probabilities": [1.5, -0.5, 0]}, "'probabilities'[1] is negative (-0.5)"),
        (
            {"probabilities": [2.0, 1.0, 0.5]},
            "'probabilities' sum to 3.5, expected 1 (within 0.01)",
        ),
        ('{"probabilities": [1e999, 0, 0]}', "'probabilities'[0] is not finite (inf)"),
        ("{", "invalid JSON at line 1, column 2"),
    ],
)
def test_bad_classification_file(tmp_path: Path, content: Any, reason: str) -> None:
    _setup(
        tmp_path, "classification", {"bad.jpg": content, "good.jpg": {"probabilities": [1, 0, 0]}}
    )
    predictions, problems = _load(tmp_path, ["good.jpg", "bad.jpg"], "classification")
    assert predictions.present.tolist() == [True, False]
    assert problems[0].filename == ".sift/predictions/bad.json"
    assert problems[0].reason.startswith(reason), problems[0].reason
    assert problems[1:] == [InputProblem("predictions", "missing for 1 of 2 samples")]


def test_near_one_sums_are_accepted(tmp_path: Path) -> None:
    _setup(tmp_path, "classification", {"a.jpg": {"probabilities": [0.335, 0.335, 0.335]}})
    predictions, problems = _load(tmp_path, ["a.jpg"], "classification")
    assert problems == []
    values, _ = derive_values(predictions, ["entropy"])
    assert values["scores:entropy"][0] == 1.0  # clipped, not 1.0000x


def test_sample_named_like_the_schema(tmp_path: Path) -> None:
    _setup(tmp_path, "classification", {})
    _, problems = _load(tmp_path, ["schema.png"], "classification")
    assert problems[0] == InputProblem(
        SCHEMA, "sample 'schema.png' maps onto schema.json; rename the image"
    )


# --- detection --------------------------------------------------------------------------------

DETECTIONS = {
    "many.jpg": {
        "objects": [
            {"box": [0, 0, 10, 20], "class": "car", "score": 0.9},
            {"box": [5.5, 1, 3, 4], "class": 1, "score": 0.5, "probabilities": [0.5, 0.5, 0]},
            {"box": [1, 2, 3, 4], "class": "car", "score": 0.7},
        ]
    },
    "empty.jpg": {"objects": []},
    "tie.jpg": {
        "objects": [
            {"box": [0, 0, 1, 1], "class": "car", "score": 0.3},
            {"box": [0, 0, 1, 1], "class": "person", "score": 0.8},
        ]
    },
    "even.jpg": {
        "objects": [
            {"box": [0, 0, 1, 1], "class": "truck", "score": 0.5},
            {"box": [0, 0, 1, 1], "class": "person", "score": 0.5},
        ]
    },
}
DETECTION_IDS = ["many.jpg", "empty.jpg", "missing.jpg", "tie.jpg", "even.jpg"]


def _binary_entropy(s: float) -> float:
    return -(s * math.log(s) + (1 - s) * math.log(1 - s)) / math.log(2)


def test_detection_parsing(tmp_path: Path) -> None:
    _setup(tmp_path, "detection", DETECTIONS)
    predictions, problems = _load(tmp_path, DETECTION_IDS, "detection")
    assert problems == [InputProblem("predictions", "missing for 1 of 5 samples")]
    assert predictions.present.tolist() == [True, True, False, True, True]
    assert predictions.offsets.tolist() == [0, 3, 3, 3, 5, 7]
    assert predictions.object_counts().tolist() == [3, 0, 0, 2, 2]
    assert predictions.object_rows(3) == slice(3, 5)
    _close(predictions.boxes[1], [5.5, 1, 3, 4])
    assert predictions.object_classes.tolist() == [0, 1, 0, 0, 1, 2, 1]
    _close(predictions.object_scores, [0.9, 0.5, 0.7, 0.3, 0.8, 0.5, 0.5])
    assert predictions.object_probabilities is not None
    _close(predictions.object_probabilities[1], [0.5, 0.5, 0.0])
    assert np.isnan(predictions.object_probabilities[[0, 2, 3, 4, 5, 6]]).all()
    assert predictions.probabilities.shape == (0, 3)


def test_detection_scores(tmp_path: Path) -> None:
    _setup(tmp_path, "detection", DETECTIONS)
    predictions, _ = _load(tmp_path, DETECTION_IDS, "detection")
    values, problems = derive_values(
        predictions,
        [
            "entropy",
            "margin",
            "leastConfidence",
            "objectCount",
            "meanScore",
            "classPresence.car",
            "classPresence.truck",
        ],
    )
    assert problems == []
    # many.jpg: car 0.9 and car 0.7 from their scores; the person from its probabilities.
    entropy = (_binary_entropy(0.9) + math.log(2) / math.log(3) + _binary_entropy(0.7)) / 3
    tie = (_binary_entropy(0.3) + _binary_entropy(0.8)) / 2
    _close(values["scores:entropy"], [entropy, NAN, NAN, tie, 1.0])
    _close(values["scores:margin"], [(0.2 + 1.0 + 0.6) / 3, NAN, NAN, (0.6 + 0.4) / 2, 1.0])
    _close(values["scores:leastConfidence"], [(0.1 + 0.5 + 0.3) / 3, NAN, NAN, 0.25, 0.5])
    _close(values["scores:objectCount"], [3, 0, NAN, 2, 2])
    _close(values["scores:meanScore"], [0.7, NAN, NAN, 0.55, 0.5])
    _close(values["scores:classPresence.car"], [1, 0, NAN, 1, 0])
    _close(values["scores:classPresence.truck"], [0, 0, NAN, 0, 1])
    # Most objects wins; a tie goes to the larger summed score, then to the earlier class.
    assert values["predictions:class"].tolist() == ["car", None, None, "person", "person"]


def _objects(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"box": [0, 0, 1, 1], "class": "car", "score": 0.5}
    obj.update(fields)
    return {"objects": [{"box": [0, 0, 1, 1], "class": 0, "score": 1.0}, obj]}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"boxes": []}, "missing key 'objects' (use [] for an image without objects)"),
        ({"objects": {}}, "'objects' must be a list, found an object"),
        ({"objects": [1]}, "objects[0] must be an object, found a number"),
        ({"objects": [{"class": "car", "score": 0.5}]}, "objects[0]: missing key 'box'"),
        ({"objects": [{"box": [0, 0, 1, 1], "score": 0.5}]}, "objects[0]: missing key 'class'"),
        ({"objects": [{"box": [0, 0, 1, 1], "class": 0}]}, "objects[0]: missing key 'score'"),
        (_objects(box=[0, 0, 1]), "objects[1].box must be 4 finite numbers [x, y, width, height]"),
        (_objects(box="0 0 1 1"), "objects[1].box must be 4 finite numbers"),
        (_objects(box=[0, "0", 1, 1]), "objects[1].box must be 4 finite numbers"),
        (_objects(box=[-1, 0, 1, 1]), "objects[1].box x and y must not be negative"),
        (_objects(box=[0, 0, 0, 1]), "objects[1].box width and height must be positive"),
        (_objects(**{"class": "bus"}), "objects[1].class 'bus' is not one of the classes"),
        (_objects(**{"class": 3}), "objects[1].class index 3 is out of range 0..2"),
        (_objects(**{"class": -1}), "objects[1].class index -1 is out of range 0..2"),
        (_objects(**{"class": 1.0}), "objects[1].class must be a class name or an integer index"),
        (_objects(**{"class": True}), "objects[1].class must be a class name or an integer"),
        (_objects(score=1.5), "objects[1].score must be a number from 0 to 1, found 1.5"),
        (_objects(score="high"), "objects[1].score must be a number from 0 to 1, found 'high'"),
        (_objects(probabilities=[1, 0]), "objects[1].probabilities has 2 values, expected 3"),
        (_objects(probabilities=[0.2, 0.2, 0.2]), "objects[1].probabilities sum to 0.6"),
    ],
)
def test_bad_detection_file(tmp_path: Path, content: Any, reason: str) -> None:
    _setup(tmp_path, "detection", {"bad.jpg": content, "good.jpg": {"objects": []}})
    predictions, problems = _load(tmp_path, ["good.jpg", "bad.jpg"], "detection")
    assert predictions.present.tolist() == [True, False]
    assert predictions.object_counts().tolist() == [0, 0]
    assert problems[0].filename == ".sift/predictions/bad.json"
    assert problems[0].reason.startswith(reason), problems[0].reason


def test_detection_without_probabilities_or_objects(tmp_path: Path) -> None:
    _setup(tmp_path, "detection", {"a.jpg": {"objects": []}}, classes=["thing"])
    predictions, problems = _load(tmp_path, ["a.jpg"], "detection")
    assert problems == []
    assert predictions.object_probabilities is None
    assert predictions.boxes.shape == (0, 4)
    values, _ = derive_values(predictions, ["entropy", "objectCount", "classPresence.thing"])
    _close(values["scores:entropy"], [NAN])
    _close(values["scores:objectCount"], [0])
    _close(values["scores:classPresence.thing"], [0])
    assert values["predictions:class"].tolist() == [None]


# --- score names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "task", "problem"),
    [
        ("entropy", "classification", None),
        ("margin", "detection", None),
        ("classPresence.car", "classification", None),
        ("objectCount", "detection", None),
        ("objectCount", "classification", "score 'objectCount' needs detection predictions"),
        ("meanScore", "classification", "score 'meanScore' needs detection predictions"),
        ("classPresence.", "detection", "score 'classPresence.' needs a class name"),
        ("entropyy", "detection", "unknown score 'entropyy'; known scores: entropy, margin"),
    ],
)
def test_score_names(name: str, task: Task, problem: str | None) -> None:
    found = score_problem(name, task)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_score_name_errors(tmp_path: Path) -> None:
    assert "classPresence." in SCORE_NAMES
    _setup(tmp_path, "classification", {"a.jpg": {"probabilities": [1, 0, 0]}})
    predictions, _ = _load(tmp_path, ["a.jpg"], "classification")
    with pytest.raises(ValueError, match="unknown score"):
        derive_values(predictions, ["nope"])
    with pytest.raises(ValueError, match="needs detection"):
        derive_values(predictions, ["objectCount"])
    values, problems = derive_values(predictions, ["classPresence.bus"])
    _close(values["scores:classPresence.bus"], [NAN])
    assert problems == [
        InputProblem(
            "scores:classPresence.bus",
            "class 'bus' is not in the predictions' classes (car, person, truck)",
        )
    ]


def test_only_requested_samples_are_read(tmp_path: Path) -> None:
    _setup(tmp_path, "classification", {"a.jpg": {"probabilities": [1, 0, 0]}, "b.jpg": "nope"})
    predictions, problems = _load(tmp_path, ["a.jpg"], "classification")
    assert problems == []
    assert predictions.present.tolist() == [True]


def test_programming_errors_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        load_predictions(tmp_path, ["a.jpg"], PREFIX, "segmentation")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sample id"):
        load_predictions(tmp_path, ["../a.jpg"], PREFIX, "detection")
