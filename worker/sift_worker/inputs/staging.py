"""Side files from object storage: copy what the readers would open into a folder.

The metadata and predictions readers work on a folder (a volume). For an input in
object storage the worker copies exactly the objects those readers would open,
under their own keys, into the run's private input staging folder, and the same
readers then run on that folder, so every rule (missing files, bad JSON, size limits,
tables before per-sample files) is the volume's. Names are derived from the listing
(``sidecar_name``), never listed: the default prefixes (``.sift/...``) are hidden
keys that a run's listing skips, and a missing side file is a 404, which reads as
"not there" like on a volume.

Order keeps requests down: the predictions schema first (without a valid one no
per-sample file is read), the metadata tables next (a table means no per-sample
files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from sift_worker.api.v1alpha1 import InputSpec
from sift_worker.inputs import MAX_JSON_BYTES, InputProblem, check_prefix, sidecar_name
from sift_worker.inputs.metadata import JSONL_TABLE, PARQUET_TABLE
from sift_worker.inputs.predictions import SCHEMA_FILE, _read_schema

__all__ = ["SideFileSource", "stage_side_files"]


class SideFileSource(Protocol):
    """Object storage as the staging step sees it (``dataplane.RemoteInput``)."""

    @property
    def side_dir(self) -> Path: ...

    def download_many(
        self, names: Iterable[str], max_bytes: int | None = None, *, truncate: bool = False
    ) -> list[tuple[str, str]]: ...


def stage_side_files(
    source: SideFileSource, spec: InputSpec, files: Sequence[str], *, metadata: bool
) -> tuple[Path, list[InputProblem]]:
    """Copy the run's side files into ``source.side_dir``; (that folder, key problems).

    ``metadata``: whether anything reads metadata (strategies or the report).
    """
    folder = source.side_dir
    folder.mkdir(parents=True, exist_ok=True)
    refused: list[tuple[str, str]] = []
    preds = spec.predictions
    if preds is not None and check_prefix(preds.prefix) is None:
        schema = f"{preds.prefix}{SCHEMA_FILE}"
        refused += source.download_many([schema], MAX_JSON_BYTES, truncate=True)
        classes, _ = _read_schema(folder, schema, preds.task)
        if classes is not None:
            names = _sidecars(preds.prefix, files, skip=schema)
            refused += source.download_many(names, MAX_JSON_BYTES, truncate=True)
    meta = spec.metadata
    if metadata and meta is not None and check_prefix(meta.prefix) is None:
        tables = [f"{meta.prefix}{PARQUET_TABLE}", f"{meta.prefix}{JSONL_TABLE}"]
        refused += source.download_many(tables)  # over the download cap: the run fails
        if not any((folder / t).is_file() for t in tables):
            names = _sidecars(meta.prefix, files)
            refused += source.download_many(names, MAX_JSON_BYTES, truncate=True)
    return folder, [InputProblem(name, reason) for name, reason in refused]


def _sidecars(prefix: str, files: Sequence[str], skip: str | None = None) -> Iterator[str]:
    for file in files:
        name = sidecar_name(prefix, file)
        if name != skip:
            yield name
