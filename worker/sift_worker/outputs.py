"""Artifacts of a run: pure builders for their content, atomic writers for the files.

Every file is written to a temporary name and renamed into place, so a crashed
run never leaves a half-written ``selection.csv`` that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SELECTION_HEAD = ("filename", "selected", "rank", "objective")
SELECTION_TAIL = ("distance_to_selection", "status", "duplicate_of")


def current_umask() -> int:
    """The process umask (reading it means setting it, so put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(
            tmp, 0o666 & ~current_umask()
        )  # mkstemp's 0600 would hide results from the user's group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _csv(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(value: float) -> str:
    return "" if math.isinf(value) or math.isnan(value) else f"{value:.6f}"


@dataclass(frozen=True)
class SelectionTable:
    """``selection.csv``: one row per sample (listed order), why each was or was not picked.

    Columns: filename, selected, rank, objective (combined value when picked), one column
    per strategy label with its contribution, distance_to_selection, status (``ok``,
    ``corrupt``, ``duplicate``, ``pooled``, ``excluded by threshold[i]``), duplicate_of.
    """

    header: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def to_csv(self) -> str:
        return _csv(self.rows, self.header)


@dataclass(frozen=True)
class SampleStatus:
    """What happened to the samples that were not candidates, by sample id."""

    corrupt: Iterable[str] = ()
    duplicate_of: Mapping[str, str] | None = None
    pooled: Iterable[str] = ()
    excluded_by: Mapping[str, str] | None = None


def build_selection_table(
    samples: Sequence[str],
    picks: Sequence[str],
    objective: np.ndarray,
    contributions: Mapping[str, np.ndarray],
    distance: Mapping[str, float],
    status: SampleStatus,
) -> SelectionTable:
    labels = list(contributions)
    rank_of = {name: i for i, name in enumerate(picks)}
    corrupt, pooled = set(status.corrupt), set(status.pooled)
    dup_of = status.duplicate_of or {}
    excluded = status.excluded_by or {}
    rows = []
    for name in samples:
        i = rank_of.get(name)
        if name in corrupt:
            state = "corrupt"
        elif name in dup_of:
            state = "duplicate"
        elif name in pooled:
            state = "pooled"
        elif name in excluded:
            state = f"excluded by {excluded[name]}"
        else:
            state = "ok"
        if i is None:
            picked: tuple[str, ...] = ("false", "", "", *("" for _ in labels))
        else:
            picked = (
                "true",
                str(i + 1),
                _fmt(float(objective[i])),
                *(_fmt(float(contributions[lab][i])) for lab in labels),
            )
        rows.append(
            (
                name,
                *picked,
                _fmt(distance.get(name, math.nan)),
                state,
                dup_of.get(name, ""),
            )
        )
    return SelectionTable((*SELECTION_HEAD, *labels, *SELECTION_TAIL), rows)


def duplicates_csv(rows: Iterable[tuple[str, str, str, float]]) -> str:
    return _csv(
        ((a, b, k, _fmt(d)) for a, b, k, d in rows),
        ("filename", "duplicate_of", "kind", "distance"),
    )


def problems_csv(problems: Iterable[tuple[str, str]]) -> str:
    return _csv(problems, ("file", "reason"))


def corrupt_csv(corrupt: Iterable[tuple[str, str]]) -> str:
    return _csv(corrupt, ("filename", "reason"))


def write_embeddings(out_dir: Path, filenames: Sequence[str], embeddings: np.ndarray) -> None:
    """``embeddings.npy`` + ``embeddings.txt`` (row order): the same layout Sift reads back."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(embeddings, dtype=np.float32))
    atomic_write_bytes(out_dir / "embeddings.npy", buf.getvalue())
    atomic_write_text(out_dir / "embeddings.txt", "".join(f"{n}\n" for n in filenames))


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def thumbnail_name(rank: int, filename: str) -> str:
    stem = _UNSAFE.sub("_", Path(filename).stem)[:80] or "sample"
    return f"{rank:05d}_{stem}.jpg"


def replace_dir(target: Path, files: Iterable[tuple[str, bytes]]) -> None:
    """Fill a fresh sibling directory, then swap it in: no stale files from earlier runs."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        for name, data in files:
            (staging / name).write_bytes(data)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
