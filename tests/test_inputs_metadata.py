"""Metadata: every source yields the same columns; every bad file is a problem, never a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sift_worker import inputs
from sift_worker.inputs import InputProblem, read_json, sidecar_name
from sift_worker.inputs.metadata import load_metadata

PREFIX = ".sift/metadata/"
IDS = ["scenes/a/img_0001.jpg", "scenes/a/img_0002.png", "b.jpeg", "noext"]


def _write(root: Path, name: str, content: str | bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def _per_sample(root: Path, objects: dict[str, Any]) -> None:
    for sample_id, obj in objects.items():
        _write(root, sidecar_name(PREFIX, sample_id), json.dumps(obj))


def _reasons(problems: list[InputProblem], filename: str) -> list[str]:
    return [p.reason for p in problems if p.filename == filename]


def _same(actual: np.ndarray, expected: list[Any]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual.tolist(), expected, strict=True):
        if isinstance(e, float) and math.isnan(e):
            assert isinstance(a, float)
            assert math.isnan(a)
        else:
            assert a == e
            assert type(a) is type(e)


NAN = float("nan")
OBJECTS: dict[str, dict[str, Any]] = {
    "scenes/a/img_0001.jpg": {"weather": "sunny", "speed": 3, "camera": {"id": "front", "h": 1.5}},
    "scenes/a/img_0002.png": {"weather": "rain", "speed": 2.5, "night": True, "camera": {"id": 7}},
    "b.jpeg": {"weather": None, "speed": 0, "night": False, "camera.id": "literal"},
}


def test_sidecar_names() -> None:
    assert sidecar_name(PREFIX, "scenes/a/img_0001.jpg") == ".sift/metadata/scenes/a/img_0001.json"
    assert sidecar_name(PREFIX, "noext") == ".sift/metadata/noext.json"
    assert sidecar_name("meta-", "x.tar.gz") == "meta-x.tar.json"
    assert sidecar_name("", "a/b.c/d") == "a/b.c/d.json"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("weather", ["sunny", "rain", None, None]),
        ("speed", [3.0, 2.5, 0.0, NAN]),
        ("night", [NAN, 1.0, 0.0, NAN]),
        ("camera.h", [1.5, NAN, NAN, NAN]),
        ("absent", [NAN, NAN, NAN, NAN]),
    ],
)
def test_per_sample_files(tmp_path: Path, key: str, expected: list[Any]) -> None:
    _per_sample(tmp_path, OBJECTS)
    values, problems = load_metadata(tmp_path, IDS, PREFIX, [key])
    assert list(values) == [f"metadata:{key}"]
    _same(values[f"metadata:{key}"], expected)
    missing = sum(v is None or (isinstance(v, float) and math.isnan(v)) for v in expected)
    assert problems == [
        InputProblem(f"metadata:{key}", f"missing for {missing} of {len(IDS)} samples")
    ]


def test_literal_dotted_key_wins_and_mixed_types(tmp_path: Path) -> None:
    _per_sample(tmp_path, OBJECTS)
    values, problems = load_metadata(tmp_path, IDS, PREFIX, ["camera.id"])
    # "front" (string), 7 (number), "literal" (a top-level key spelled with a dot)
    _same(values["metadata:camera.id"], ["front", "7", "literal", None])
    assert _reasons(problems, "metadata:camera.id") == [
        "mixed types: 1 numbers or booleans and 2 strings; "
        "treated as categorical, numbers as written in JSON",
        "missing for 1 of 4 samples",
    ]


def test_mixed_values_keep_their_json_spelling(tmp_path: Path) -> None:
    ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    _per_sample(tmp_path, {"a.jpg": {"k": "x"}, "b.jpg": {"k": True}, "c.jpg": {"k": 2.5}})
    _per_sample(tmp_path, {"d.jpg": {"k": 10}})
    values, _ = load_metadata(tmp_path, ids, PREFIX, ["k"])
    _same(values["metadata:k"], ["x", "true", "2.5", "10"])


def test_no_keys_reads_nothing(tmp_path: Path) -> None:
    assert load_metadata(tmp_path, IDS, PREFIX, []) == ({}, [])


def test_nothing_found_says_where_it_looked(tmp_path: Path) -> None:
    values, problems = load_metadata(tmp_path, IDS, PREFIX, ["a", "b"])
    assert set(values) == {"metadata:a", "metadata:b"}
    assert problems[0].filename == PREFIX
    assert "no metadata found" in problems[0].reason
    assert _reasons(problems, "metadata:a") == ["missing for 4 of 4 samples"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"speed": 1,\n "x": }', "invalid JSON at line 2, column 7: Expecting value"),
        ("[1, 2]", "expected a JSON object, found a list"),
        ('"text"', "expected a JSON object, found a string"),
        (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
        ('{"speed": [1, 2]}', "key 'speed' is a list, not a number or string"),
        ('{"speed": {"v": 1}}', "key 'speed' is an object, not a number or string; name a"),
        ('{"speed": Infinity}', "key 'speed' is not a finite number (inf)"),
        ('{"speed": 1e999}', "key 'speed' is not a finite number (inf)"),
        ('{"speed": 1' + "0" * 400 + "}", "key 'speed' is not a finite number (1000"),
    ],
)
def test_bad_file_is_a_problem(tmp_path: Path, content: str | bytes, reason: str) -> None:
    _per_sample(tmp_path, {"scenes/a/img_0001.jpg": {"speed": 1}})
    bad = sidecar_name(PREFIX, "b.jpeg")
    _write(tmp_path, bad, content)
    values, problems = load_metadata(tmp_path, IDS, PREFIX, ["speed"])
    _same(values["metadata:speed"], [1.0, NAN, NAN, NAN])
    (problem,) = _reasons(problems, bad)
    assert problem.startswith(reason)
    assert str(tmp_path) not in problem


def test_nan_is_missing_not_a_problem(tmp_path: Path) -> None:
    _write(tmp_path, sidecar_name(PREFIX, "b.jpeg"), '{"speed": NaN}')
    values, problems = load_metadata(tmp_path, ["b.jpeg"], PREFIX, ["speed"])
    _same(values["metadata:speed"], [NAN])
    assert problems == [InputProblem("metadata:speed", "missing for 1 of 1 samples")]


def test_unreadable_sidecars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / sidecar_name(PREFIX, "b.jpeg")).mkdir(parents=True)
    file = read_json(tmp_path, sidecar_name(PREFIX, "b.jpeg"))
    assert file.found
    assert file.problem == InputProblem(".sift/metadata/b.json", "is a directory, not a JSON file")
    assert read_json(tmp_path, "nowhere/x.json") == (False, None, None)
    _write(tmp_path, "big.json", b"{}" + b" " * 2048)
    assert read_json(tmp_path, "big.json/under-a-file.json") == (False, None, None)
    assert read_json(tmp_path, "big.json") == (True, {}, None)
    monkeypatch.setattr(inputs, "MAX_JSON_BYTES", 1024)
    assert read_json(tmp_path, "big.json").problem is not None


def test_files_of_other_samples_are_not_read(tmp_path: Path) -> None:
    _write(tmp_path, sidecar_name(PREFIX, "other.jpg"), "not json")
    _per_sample(tmp_path, {"b.jpeg": {"k": 1}})
    values, problems = load_metadata(tmp_path, ["b.jpeg"], PREFIX, ["k"])
    _same(values["metadata:k"], [1.0])
    assert problems == []


def _rows() -> list[dict[str, Any]]:
    return [{"filename": sample_id, **obj} for sample_id, obj in OBJECTS.items()]


def _jsonl(root: Path, lines: list[str]) -> str:
    name = PREFIX + "metadata.jsonl"
    _write(root, name, "\n".join(lines) + "\n")
    return name


@pytest.mark.parametrize("table", ["jsonl", "parquet"])
def test_tables_match_per_sample_files(tmp_path: Path, table: str) -> None:
    keys = ["weather", "speed", "night", "camera.id", "camera.h"]
    files_dir = tmp_path / "files"
    _per_sample(files_dir, OBJECTS)
    expected, expected_problems = load_metadata(files_dir, IDS, PREFIX, keys)
    table_dir = tmp_path / "table"
    rows = _rows()
    if table == "jsonl":
        _jsonl(table_dir, [json.dumps(r) for r in rows])
    else:
        # Parquet: a struct column for nested keys, a literal dotted column, nulls for gaps.
        columns: dict[str, list[Any]] = {k: [r.get(k) for r in rows] for k in keys[:3]}
        columns["filename"] = [r["filename"] for r in rows]
        columns["camera"] = [r.get("camera") for r in rows]
        columns["camera.id"] = [r.get("camera.id") for r in rows]
        columns["speed"] = [float(v) for v in columns["speed"]]
        columns["camera"][1] = {"id": "7", "h": None}  # Parquet structs hold one type
        (table_dir / PREFIX).mkdir(parents=True)
        pq.write_table(pa.table(columns), table_dir / (PREFIX + "metadata.parquet"))
    # A stray per-sample file is ignored once a table exists.
    _write(table_dir, sidecar_name(PREFIX, "noext"), '{"speed": 99}')
    values, problems = load_metadata(table_dir, IDS, PREFIX, keys)
    for key in keys:
        _same(values[f"metadata:{key}"], expected[f"metadata:{key}"].tolist())
    if table == "jsonl":
        assert problems == expected_problems


def test_parquet_reads_only_needed_columns(tmp_path: Path) -> None:
    name = PREFIX + "metadata.parquet"
    (tmp_path / PREFIX).mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "filename": ["b.jpeg", "unlisted.jpg", "noext"],
                "ts": pa.array([1, 2, 3], pa.timestamp("s")),
                "n": [1, 2, 3],
            }
        ),
        tmp_path / name,
    )
    values, problems = load_metadata(tmp_path, IDS, PREFIX, ["n", "ts"])
    _same(values["metadata:n"], [NAN, NAN, 1.0, 3.0])
    assert _reasons(problems, name) == [
        "row 0 (b.jpeg): key 'ts' is a datetime, not a number or string",
        "row 2 (noext): key 'ts' is a datetime, not a number or string",
    ]


@pytest.mark.parametrize(
    ("lines", "reasons"),
    [
        (['{"filename": "b.jpeg", "k": 1', ""], ["invalid JSON at line 1, column 30: Expecting"]),
        (['{"filename": "b.jpeg", "k": 1}', "[1]"], ["line 2: expected a JSON object, found"]),
        (['{"k": 1}'], ["line 1: 'filename' must be the sample's path relative to the input"]),
        (
            ['{"filename": "b.jpeg", "k": 1}', '{"filename": "b.jpeg", "k": 2}'],
            ["line 2 (b.jpeg): repeats line 1; ignored"],
        ),
        (['{"filename": "b.jpeg", "k": [1]}'], ["line 1 (b.jpeg): key 'k' is a list, not a"]),
        (['{"filename": "/abs/b.jpeg", "k": 1}'], ["none of its 1 filenames is a sample"]),
        ([], ["has no rows"]),
    ],
)
def test_bad_jsonl_rows(tmp_path: Path, lines: list[str], reasons: list[str]) -> None:
    name = _jsonl(tmp_path, lines)
    _, problems = load_metadata(tmp_path, IDS, PREFIX, ["k"])
    found = _reasons(problems, name)
    assert len(found) == len(reasons), found
    for reason, expected in zip(found, reasons, strict=True):
        assert reason.startswith(expected)


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        (pa.table({"name": ["b.jpeg"], "k": [1]}), "has no 'filename' column"),
        (pa.table({"filename": [1], "k": [1]}), "column 'filename' must hold strings, not int64"),
        (None, "not a readable Parquet file: "),
    ],
)
def test_bad_parquet(tmp_path: Path, table: pa.Table | None, reason: str) -> None:
    name = PREFIX + "metadata.parquet"
    _write(tmp_path, name, b"PAR1 not really")
    if table is not None:
        pq.write_table(table, tmp_path / name)
    _write(tmp_path, PREFIX + "metadata.jsonl", '{"filename": "b.jpeg", "k": 1}')
    values, problems = load_metadata(tmp_path, IDS, PREFIX, ["k"])
    _same(values["metadata:k"], [NAN] * 4)
    assert _reasons(problems, PREFIX + "metadata.jsonl") == [
        "ignored: metadata.parquet next to it is used"
    ]
    (found,) = _reasons(problems, name)
    assert found.startswith(reason)
    assert str(tmp_path) not in found


def test_prefix_outside_the_input_is_a_problem(tmp_path: Path) -> None:
    values, problems = load_metadata(tmp_path, IDS, "../elsewhere/", ["k"])
    _same(values["metadata:k"], [NAN] * 4)
    assert problems[0].filename == "../elsewhere/"


@pytest.mark.parametrize(
    ("ids", "keys"),
    [
        (["/abs.jpg"], ["k"]),
        (["../up.jpg"], ["k"]),
        (["a.jpg", "a.jpg"], ["k"]),
        (["a.jpg"], ["bad key"]),
        (["a.jpg"], ["a..b"]),
        (["a.jpg"], "k"),
    ],
)
def test_programming_errors_raise(tmp_path: Path, ids: list[str], keys: list[str]) -> None:
    with pytest.raises(ValueError, match=r"sample id|metadata key|iterable"):
        load_metadata(tmp_path, ids, PREFIX, keys)
