"""Per-sample metadata: one column per requested key, for thresholds, weights and balancing.

Sources, relative to the input folder (see docs/inputs.md):

- a table ``<prefix>metadata.parquet`` or ``<prefix>metadata.jsonl`` with a ``filename``
  column; when a table exists, per-sample files are not read at all;
- otherwise one JSON object per sample at ``<prefix><sample id with .json as extension>``.

Only requested keys are kept and only rows of requested samples, so memory follows
``len(keys) * len(sample_ids)``, not the size of the metadata.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sift_worker.inputs import (
    InputProblem,
    check_prefix,
    check_sample_ids,
    finite_float,
    is_number,
    json_type,
    missing_summary,
    parse_json,
    read_json,
    scrub,
    sidecar_name,
)

PARQUET_TABLE = "metadata.parquet"
JSONL_TABLE = "metadata.jsonl"

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_BATCH_ROWS = 65536  # Parquet rows converted to Python at a time

Scalar = bool | int | float | str
# (sample row, the sample's JSON object, problem filename, reason prefix naming the row)
Record = Callable[[int, dict[str, Any], str, str], None]


def load_metadata(
    input_dir: Path, sample_ids: Sequence[str], prefix: str, keys: Iterable[str]
) -> tuple[dict[str, np.ndarray], list[InputProblem]]:
    """``{"metadata:<key>": column}`` for each key, row-aligned with ``sample_ids``.

    A column is float64 (NaN = missing) when every present value is a number or boolean, else
    an object array of str (None = missing). Problems name the file (or table row) to fix; a
    key missing for some samples yields one summary problem, named ``metadata:<key>``.
    """
    wanted = _check_keys(keys)
    rows = check_sample_ids(sample_ids)
    if not wanted:
        return {}, []
    n = len(sample_ids)
    values: dict[str, list[Scalar | None]] = {key: [None] * n for key in wanted}
    problems: list[InputProblem] = []

    def record(row: int, obj: dict[str, Any], filename: str, where: str) -> None:
        for key in wanted:
            value, reason = _scalar(_lookup(obj, key))
            if reason is not None:
                problems.append(InputProblem(filename, f"{where}key {key!r} {reason}"))
            values[key][row] = value

    bad_prefix = check_prefix(prefix)
    if bad_prefix is not None:
        problems.append(bad_prefix)
    else:
        _read_source(input_dir, sample_ids, rows, prefix, wanted, record, problems)

    columns: dict[str, np.ndarray] = {}
    for key in wanted:
        column, mixed = _column(key, values.pop(key))
        if mixed is not None:
            problems.append(mixed)
        columns[f"metadata:{key}"] = column
        summary = missing_summary(f"metadata:{key}", _count_missing(column), n)
        if summary is not None:
            problems.append(summary)
    return columns, problems


def _check_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise ValueError("keys must be an iterable of key names, not one string")
    wanted = list(dict.fromkeys(keys))
    for key in wanted:
        if not _KEY.match(key) or ".." in key or key.endswith("."):
            raise ValueError(f"invalid metadata key {key!r}")
    return wanted


def _read_source(
    input_dir: Path,
    sample_ids: Sequence[str],
    rows: dict[str, int],
    prefix: str,
    keys: list[str],
    record: Record,
    problems: list[InputProblem],
) -> None:
    """Feed every requested sample's metadata object to ``record``."""
    parquet, jsonl = f"{prefix}{PARQUET_TABLE}", f"{prefix}{JSONL_TABLE}"
    if (input_dir / parquet).is_file():
        if (input_dir / jsonl).is_file():
            problems.append(InputProblem(jsonl, f"ignored: {PARQUET_TABLE} next to it is used"))
        _read_parquet(input_dir, parquet, rows, keys, record, problems)
        return
    if (input_dir / jsonl).is_file():
        _read_jsonl(input_dir, jsonl, rows, record, problems)
        return
    found = 0
    for row, sample_id in enumerate(sample_ids):
        name = sidecar_name(prefix, sample_id)
        file = read_json(input_dir, name)
        found += file.found
        if file.problem is not None:
            problems.append(file.problem)
        elif isinstance(file.value, dict):
            record(row, file.value, name, "")
        elif file.found:
            reason = f"expected a JSON object, found {json_type(file.value)}"
            problems.append(InputProblem(name, reason))
    if not found and sample_ids:
        reason = (
            f"no metadata found: no {PARQUET_TABLE}, no {JSONL_TABLE} and no per-sample "
            f".json files under prefix {prefix!r}"
        )
        problems.append(InputProblem(prefix or ".", reason))


class _Table:
    """Row bookkeeping shared by both table formats: filename checks and repeats."""

    def __init__(self, name: str, rows: dict[str, int], unit: str) -> None:
        self.name, self.rows, self.unit = name, rows, unit
        self.seen: dict[str, int] = {}
        self.total = 0  # rows, valid or not
        self.named = 0  # rows with a valid filename

    def row_of(self, number: int, filename: object, problems: list[InputProblem]) -> int | None:
        """The sample row for a table row, or None (not requested, invalid or repeated)."""
        self.total += 1
        if not isinstance(filename, str) or not filename:
            reason = (
                f"{self.unit} {number}: 'filename' must be the sample's path relative to the "
                f"input, found {json_type(filename)}"
            )
            problems.append(InputProblem(self.name, reason))
            return None
        self.named += 1
        row = self.rows.get(filename)
        if row is None:
            return None
        first = self.seen.setdefault(filename, number)
        if first != number:
            reason = f"{self.unit} {number} ({filename}): repeats {self.unit} {first}; ignored"
            problems.append(InputProblem(self.name, reason))
            return None
        return row

    def finish(self, problems: list[InputProblem]) -> None:
        if not self.total:
            problems.append(InputProblem(self.name, "has no rows"))
        elif self.named and not self.seen:
            reason = (
                f"none of its {self.named} filenames is a sample; filenames are paths relative "
                "to the input, e.g. 'scenes/a/img_0001.jpg'"
            )
            problems.append(InputProblem(self.name, reason))


def _read_jsonl(
    input_dir: Path, name: str, rows: dict[str, int], record: Record, problems: list[InputProblem]
) -> None:
    table = _Table(name, rows, "line")
    try:
        with (input_dir / name).open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                obj, reason = parse_json(line.rstrip(b"\r\n"), line=number)
                if reason is not None:
                    table.total += 1
                    problems.append(InputProblem(name, reason))
                    continue
                if not isinstance(obj, dict):
                    table.total += 1
                    reason = f"line {number}: expected a JSON object, found {json_type(obj)}"
                    problems.append(InputProblem(name, reason))
                    continue
                row = table.row_of(number, obj.get("filename"), problems)
                if row is not None:
                    record(row, obj, name, f"line {number} ({obj['filename']}): ")
    except OSError as exc:
        problems.append(InputProblem(name, f"cannot read: {exc.strerror or type(exc).__name__}"))
        return
    table.finish(problems)


def _read_parquet(
    input_dir: Path,
    name: str,
    rows: dict[str, int],
    keys: list[str],
    record: Record,
    problems: list[InputProblem],
) -> None:
    import pyarrow as pa  # deferred: only runs that use a metadata table pay for pyarrow
    import pyarrow.parquet as pq

    table = _Table(name, rows, "row")
    try:
        with (input_dir / name).open("rb") as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            if "filename" not in schema.names:
                problems.append(InputProblem(name, "has no 'filename' column"))
                return
            if not (
                pa.types.is_string(schema.field("filename").type)
                or pa.types.is_large_string(schema.field("filename").type)
            ):
                reason = f"column 'filename' must hold strings, not {schema.field('filename').type}"
                problems.append(InputProblem(name, reason))
                return
            # Only the columns a key can resolve to: the literal key, else its first part.
            needed = {k if k in schema.names else k.split(".")[0] for k in keys}
            columns = ["filename", *sorted(needed.intersection(schema.names) - {"filename"})]
            start = 0
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
                filenames = batch.column(0).to_pylist()
                picked = [
                    (row, start + j, filename)
                    for j, filename in enumerate(filenames)
                    if (row := table.row_of(start + j, filename, problems)) is not None
                ]
                if picked:
                    take = pa.array([number - start for _, number, _ in picked], pa.int64())
                    data = {c: batch.column(c).take(take).to_pylist() for c in columns[1:]}
                    for k, (row, number, filename) in enumerate(picked):
                        obj = {"filename": filename, **{c: data[c][k] for c in columns[1:]}}
                        record(row, obj, name, f"row {number} ({filename}): ")
                start += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        reason = f"not a readable Parquet file: {scrub(str(exc), input_dir)}"
        problems.append(InputProblem(name, reason))
        return
    table.finish(problems)


def _lookup(obj: dict[str, Any], key: str) -> Any:
    """The value at ``key``: a literal top-level key wins (unless null, as in a Parquet column
    that is empty for this row), else a dotted path into objects."""
    if obj.get(key) is not None:
        return obj[key]
    current: Any = obj
    for part in key.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _scalar(value: Any) -> tuple[Scalar | None, str | None]:
    """(value to keep, problem reason): numbers, booleans and strings are kept; null and NaN
    are missing; anything else is a problem and missing."""
    if value is None or isinstance(value, bool | str):
        return value, None
    if is_number(value):
        if isinstance(value, float) and math.isnan(value):
            return None, None
        if finite_float(value) is None:
            return None, f"is not a finite number ({value!r})"
        return value, None
    if isinstance(value, dict):
        return None, "is an object, not a number or string; name a nested key as 'parent.child'"
    return None, f"is {json_type(value)}, not a number or string"


def _text(value: Scalar) -> str:
    """A value of a mixed key as text, as it is written in JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def _column(key: str, values: list[Scalar | None]) -> tuple[np.ndarray, InputProblem | None]:
    strings = sum(isinstance(v, str) for v in values)
    numbers = sum(v is not None and not isinstance(v, str) for v in values)
    if not strings:
        column = np.full(len(values), np.nan, dtype=np.float64)
        for i, v in enumerate(values):
            if v is not None:
                column[i] = float(v)
        return column, None
    text = np.empty(len(values), dtype=object)
    text[:] = [None if v is None else _text(v) for v in values]
    if not numbers:
        return text, None
    reason = (
        f"mixed types: {numbers} numbers or booleans and {strings} strings; "
        "treated as categorical, numbers as written in JSON"
    )
    return text, InputProblem(f"metadata:{key}", reason)


def _count_missing(column: np.ndarray) -> int:
    if column.dtype == object:
        return sum(v is None for v in column)
    return int(np.isnan(column).sum())
