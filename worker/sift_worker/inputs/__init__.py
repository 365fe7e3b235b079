"""What users know about their samples besides the pixels: metadata and model predictions.

Loading never raises for a bad user file: each one becomes an ``InputProblem`` (written to
``input_problems.csv``) and the sample's values count as missing, because one typo in one of a
million sidecar files must not cost the whole run. ``ValueError`` is kept for programming errors
(a malformed sample id, an unknown score name).

This module holds what ``metadata``, ``predictions`` and ``scores`` share: the problem record,
how a sample id maps to its sidecar file, and a bounded, path-free JSON read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

# A sidecar larger than this is surely not per-sample metadata or predictions; refusing it
# bounds memory when someone points the prefix at the wrong folder.
MAX_JSON_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class InputProblem:
    """One bad file or row: ``filename`` relative to the input (or a ``metadata:<key>`` /
    ``predictions`` summary), ``reason`` what to fix."""

    filename: str
    reason: str


class JsonFile(NamedTuple):
    """The outcome of reading one optional JSON file."""

    found: bool  # False: the file does not exist (missing data, not a problem by itself)
    value: Any  # the parsed JSON when found and valid, else None
    problem: InputProblem | None


def check_prefix(prefix: str) -> InputProblem | None:
    """A problem when ``prefix`` would leave the input folder (absolute, or ``..``)."""
    if prefix.startswith("/") or ".." in PurePosixPath(prefix).parts:
        return InputProblem(prefix, "prefix must be relative and stay inside the input (no '..')")
    return None


def check_sample_ids(sample_ids: Sequence[str]) -> dict[str, int]:
    """Map ids to rows; ids come from the listing, so a bad or repeated one is a bug."""
    rows: dict[str, int] = {}
    for i, sample_id in enumerate(sample_ids):
        path = PurePosixPath(sample_id)
        if not sample_id or path.is_absolute() or ".." in path.parts or "\\" in sample_id:
            raise ValueError(f"sample id {sample_id!r} is not a relative POSIX path")
        if sample_id in rows:
            raise ValueError(f"sample id {sample_id!r} is repeated")
        rows[sample_id] = i
    return rows


def sidecar_name(prefix: str, sample_id: str) -> str:
    """``<prefix><sample id with its extension replaced by .json>``, relative to the input.

    The prefix is prepended as written (like an object-store key prefix), so a folder prefix
    ends with ``/``.
    """
    path = PurePosixPath(sample_id)
    stem = path.with_suffix("") if path.suffix else path
    return f"{prefix}{stem.as_posix()}.json"


def scrub(message: str, input_dir: Path) -> str:
    """Drop the input folder's absolute path from a library's error message."""
    for root in {str(input_dir), str(input_dir.resolve())}:
        message = message.replace(root.rstrip("/") + "/", "").replace(root, "<input>")
    return message


def read_json(input_dir: Path, name: str) -> JsonFile:
    """Read ``input_dir/name`` as JSON; a missing file is ``found=False``, anything else wrong
    is a problem whose reason carries no absolute path."""
    try:
        with (input_dir / name).open("rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        return JsonFile(False, None, None)
    except IsADirectoryError:
        return JsonFile(True, None, InputProblem(name, "is a directory, not a JSON file"))
    except OSError as exc:
        return JsonFile(
            True, None, InputProblem(name, f"cannot read: {exc.strerror or type(exc).__name__}")
        )
    if len(data) > MAX_JSON_BYTES:
        too_big = f"larger than {MAX_JSON_BYTES // (1024 * 1024)} MiB"
        return JsonFile(True, None, InputProblem(name, too_big))
    value, reason = parse_json(data)
    if reason is not None:
        return JsonFile(True, None, InputProblem(name, reason))
    return JsonFile(True, value, None)


def parse_json(data: bytes | str, line: int | None = None) -> tuple[Any, str | None]:
    """Parse JSON text (UTF-8, BOM tolerated); on failure the reason gives line and column.

    ``line`` is the line number to report for one line of a JSON Lines file.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, f"not UTF-8 text (byte {exc.start})"
    else:
        text = data
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        lineno = exc.lineno if line is None else line
        return None, f"invalid JSON at line {lineno}, column {exc.colno}: {exc.msg}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for reasons users can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def is_number(value: object) -> bool:
    """A JSON number (booleans are not numbers here, even though Python says so)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite, or too large)."""
    if not is_number(value):
        return None
    try:
        result = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def missing_summary(filename: str, missing: int, total: int) -> InputProblem | None:
    """One summary problem instead of one per sample: a missing value is often expected."""
    if missing == 0:
        return None
    return InputProblem(filename, f"missing for {missing} of {total} samples")


__all__ = [
    "MAX_JSON_BYTES",
    "InputProblem",
    "JsonFile",
    "check_prefix",
    "check_sample_ids",
    "finite_float",
    "is_number",
    "json_type",
    "missing_summary",
    "parse_json",
    "read_json",
    "scrub",
    "sidecar_name",
]
