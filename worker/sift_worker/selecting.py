"""The selection stage: drop duplicates and pooled samples, then run the strategy engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sift_worker.api.v1alpha1 import SelectionSpec
from sift_worker.datapool import Pool, load_pool, pooled_mask
from sift_worker.embed import Embedded
from sift_worker.embeddings_file import load_embeddings_file
from sift_worker.selection.duplicates import Duplicates, content_hashes, find_duplicates
from sift_worker.selection.engine import select
from sift_worker.selection.kcenter import samples_to_select
from sift_worker.selection.types import Candidates, Selection


class SelectionInputError(ValueError):
    """The spec asks for something the data cannot give (unknown query file, pool mismatch)."""


@dataclass
class SelectStage:
    candidate_rows: np.ndarray  # rows of Embedded that were candidates
    selection: Selection  # indices into candidate_rows
    duplicates: Duplicates | None
    pooled: np.ndarray  # (N,) bool: already selected by an earlier run
    pool: Pool | None
    requested: int

    @property
    def picked_rows(self) -> np.ndarray:
        rows: np.ndarray = self.candidate_rows[self.selection.indices]
        return rows


def _query(spec: SelectionSpec, embedded: Embedded) -> np.ndarray | None:
    for i, entry in enumerate(spec.strategies):
        query = entry.strategy.query
        if entry.strategy.type != "similarity" or query is None:
            continue
        where = f"spec.selection.strategies[{i}].strategy.query"
        if query.filenames:
            row = {name: r for r, name in enumerate(embedded.filenames)}
            unknown = [f for f in query.filenames if f not in row]
            if unknown:
                raise SelectionInputError(
                    f"{where}.filenames: not among the samples: {unknown[:5]}"
                )
            return embedded.embeddings[[row[f] for f in query.filenames]]
        if query.embeddings is not None and query.embeddings.path is not None:
            return load_embeddings_file(Path(query.embeddings.path))[1]
        raise SelectionInputError(f"{where}: give filenames or embeddings (a local path)")
    return None


def run_select_stage(
    embedded: Embedded,
    values: dict[str, np.ndarray],
    spec: SelectionSpec,
    *,
    input_dir: Path,
    output_dir: Path,
    hash_files: bool,
) -> SelectStage:
    n_rows = len(embedded.filenames)
    keep = np.ones(n_rows, dtype=bool)
    duplicates = None
    if spec.remove_duplicates is not None:
        hashes = (
            content_hashes([input_dir / name for name in embedded.filenames])
            if hash_files
            else None
        )
        duplicates = find_duplicates(
            embedded.embeddings, hashes=hashes, max_distance=spec.remove_duplicates.max_distance
        )
        keep &= duplicates.keep
    pool = None
    pooled = np.zeros(n_rows, dtype=bool)
    if spec.datapool is not None:
        pool = load_pool(output_dir, spec.datapool.name)
        if pool.ids and pool.embeddings.shape[1] != embedded.embeddings.shape[1]:
            raise SelectionInputError(
                f"spec.selection.datapool: pool {pool.name!r} holds {pool.embeddings.shape[1]}-d "
                f"embeddings, this run makes {embedded.embeddings.shape[1]}-d (another model?)"
            )
        pooled = pooled_mask(pool, embedded.filenames)
        keep &= ~pooled
    rows = np.flatnonzero(keep)
    n = samples_to_select(len(rows), n_samples=spec.n_samples, proportion=spec.proportion)
    candidates = Candidates(
        ids=[embedded.filenames[r] for r in rows],
        embeddings=embedded.embeddings[rows],
        values={k: v[rows] for k, v in values.items()},
    )
    selection = select(
        candidates,
        spec,
        n=n,
        pool_embeddings=pool.embeddings if pool is not None and pool.ids else None,
        query_embeddings=_query(spec, embedded),
    )
    return SelectStage(rows, selection, duplicates, pooled, pool, n)
