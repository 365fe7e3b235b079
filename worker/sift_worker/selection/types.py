"""Plain data passed between input loading, duplicate removal, the datapool and selection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# Per-sample input values, keyed by what a StrategyInput names:
#   "metadata:<key path>"   -> float64 array (NaN = missing) or object array of str (None = missing)
#   "scores:<score name>"   -> float64 array (NaN = missing), e.g. "scores:entropy"
#   "predictions:class"     -> object array of str (image-level class; None = missing)
Values = Mapping[str, np.ndarray]


def value_key(input_type: str, key: str | None = None, score: str | None = None) -> str:
    """The ``Values`` key a StrategyInput reads."""
    if input_type == "metadata":
        return f"metadata:{key}"
    if input_type == "scores":
        return f"scores:{score}"
    if input_type == "predictions":
        return "predictions:class"
    return input_type


@dataclass(frozen=True)
class Candidates:
    """The samples a selection chooses from, row-aligned."""

    ids: list[str]
    embeddings: np.ndarray  # (N, D) float32, not necessarily normalised
    values: Values = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """What was picked, in pick order, and why."""

    indices: np.ndarray  # (k,) int64 rows of Candidates, in pick order
    objective: np.ndarray  # (k,) float64 combined objective value when picked
    contributions: dict[str, np.ndarray]  # strategy label -> (k,) its term of the objective
    excluded: dict[str, np.ndarray]  # threshold label -> (N,) bool, rows it filtered out
    distance_to_selection: np.ndarray  # (N,) float32 distance to the nearest pick (or pool)
    stop_reason: str
