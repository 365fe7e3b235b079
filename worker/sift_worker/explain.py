"""Pure builders that explain a selection: the report's sections and the coverage curve."""

from __future__ import annotations

import math

import numpy as np

from sift_worker.api.v1alpha1 import SelectionSpec, StrategyEntry
from sift_worker.embed import Embedded
from sift_worker.report import Distribution, DuplicateRow, StrategyEffect, make_distribution
from sift_worker.selecting import SelectStage
from sift_worker.selection.engine import default_strategies
from sift_worker.selection.types import value_key

CURVE_MAX_PICKS = 4000


def entries(spec: SelectionSpec) -> list[StrategyEntry]:
    return list(spec.strategies) or default_strategies()


def describe(entry: StrategyEntry) -> str:
    inp = entry.input
    what = inp.key or inp.score or inp.type
    detail = "" if what == inp.type else f" {what}"
    return f"{entry.strategy.type} on {inp.type}{detail}, strength {entry.strategy.strength:g}"


def strategy_summary(spec: SelectionSpec) -> str:
    count = (
        f"nSamples={spec.n_samples}"
        if spec.n_samples is not None
        else f"proportion={spec.proportion:g}"
    )
    default = "" if spec.strategies else " (default)"
    return f"{'; '.join(describe(e) for e in entries(spec))}{default}; {count}"


def strategy_effects(spec: SelectionSpec, stage: SelectStage) -> list[StrategyEffect]:
    sel = stage.selection
    totals = {label: float(np.sum(v)) for label, v in sel.contributions.items()}
    grand = sum(abs(v) for v in totals.values()) or 1.0
    effects = []
    for i, entry in enumerate(entries(spec)):
        label = f"{entry.strategy.type}[{i}]"
        contrib = sel.contributions.get(label)
        excluded = sel.excluded.get(label)
        effects.append(
            StrategyEffect(
                label=label,
                description=describe(entry),
                mean_contribution=float(np.mean(contrib))
                if contrib is not None and len(contrib)
                else 0.0,
                share=abs(totals.get(label, 0.0)) / grand,
                excluded=int(excluded.sum()) if excluded is not None else None,
            )
        )
    return effects


def distributions(
    spec: SelectionSpec, values: dict[str, np.ndarray], stage: SelectStage
) -> list[Distribution]:
    seen: set[str] = set()
    out = []
    picked = np.zeros(len(stage.candidate_rows), dtype=bool)
    picked[stage.selection.indices] = True
    for entry in entries(spec):
        inp = entry.input
        key = value_key(inp.type, inp.key, inp.score)
        if key in seen or key not in values:
            continue
        seen.add(key)
        column = values[key][stage.candidate_rows]
        target = entry.strategy.target if entry.strategy.type == "balance" else None
        out.append(make_distribution(key.replace(":", ": "), column, picked, target=target))
    return out


def duplicate_rows(embedded: Embedded, stage: SelectStage) -> list[DuplicateRow]:
    dups = stage.duplicates
    if dups is None:
        return []
    ids = embedded.filenames
    return [
        DuplicateRow(ids[row], ids[orig], dups.kind[row], float(dups.distance[row]))
        for row, orig in sorted(dups.duplicate_of.items())
    ]


def coverage_curve(picked: np.ndarray) -> list[float]:
    """Distance of each pick to the earlier picks (L2 on unit vectors), for small selections."""
    k = len(picked)
    if k < 2 or k > CURVE_MAX_PICKS:
        return []
    unit = picked / np.maximum(np.linalg.norm(picked, axis=1, keepdims=True), 1e-12)
    sq = np.clip(2.0 - 2.0 * (unit @ unit.T), 0.0, None)
    sq[np.triu_indices(k)] = np.inf
    return [math.sqrt(float(v)) for v in sq.min(axis=1)[1:]]


def status_maps(
    embedded: Embedded, stage: SelectStage
) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """(duplicate_of, pooled, excluded_by) by sample id, for selection.csv."""
    ids = embedded.filenames
    dup_of = (
        {ids[r]: ids[o] for r, o in stage.duplicates.duplicate_of.items()}
        if stage.duplicates
        else {}
    )
    pooled = [ids[r] for r in np.flatnonzero(stage.pooled)]
    excluded: dict[str, str] = {}
    for label, mask in stage.selection.excluded.items():
        for r in np.flatnonzero(mask):
            excluded.setdefault(ids[stage.candidate_rows[r]], label)
    return dup_of, pooled, excluded


def all_samples(embedded: Embedded) -> list[str]:
    """Every sample id once (embedded and corrupt), sorted like the listing."""
    return sorted(set(embedded.filenames) | {name for name, _ in embedded.corrupt})
