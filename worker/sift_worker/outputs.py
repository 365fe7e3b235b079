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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SELECTION_COLUMNS = (
    "filename",
    "selected",
    "rank",
    "distance_when_picked",
    "distance_to_selection",
    "status",
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the user's group
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
    """``selection.csv``: one row per listed sample, in listing order."""

    rows: list[tuple[str, str, str, str, str, str]]

    def to_csv(self) -> str:
        return _csv(self.rows, SELECTION_COLUMNS)


def build_selection_table(
    listed: Sequence[str],
    embedded: Sequence[str],
    picks: np.ndarray,
    pick_distances: np.ndarray,
    distance_to_selection: np.ndarray,
    corrupt: Iterable[tuple[str, str]],
) -> SelectionTable:
    rank_of = {int(idx): rank for rank, idx in enumerate(picks.tolist(), start=1)}
    row_of = {name: i for i, name in enumerate(embedded)}
    bad = {name for name, _ in corrupt}
    rows = []
    for name in listed:
        i = row_of.get(name)
        if i is None:
            status = "corrupt" if name in bad else "missing"
            rows.append((name, "false", "", "", "", status))
            continue
        rank = rank_of.get(i)
        picked = _fmt(float(pick_distances[rank - 1])) if rank else ""
        rows.append(
            (
                name,
                "true" if rank else "false",
                str(rank or ""),
                picked,
                _fmt(float(distance_to_selection[i])),
                "ok",
            )
        )
    return SelectionTable(rows)


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
    os.chmod(staging, 0o777 & ~_umask())
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
