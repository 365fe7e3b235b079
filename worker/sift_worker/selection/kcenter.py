"""Diversity selection: k-center greedy on L2-normalised embeddings.

Each step picks the sample farthest from everything picked so far, which greedily
minimises the largest distance from any sample to its nearest selected one (a
2-approximation of the optimal k-center cover). Distances are Euclidean between
unit vectors, so they lie in [0, 2]; ``minDistance`` uses the same scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class KCenterResult:
    indices: np.ndarray  # (k,) int64, in pick order
    pick_distances: (
        np.ndarray
    )  # (k,) float32, distance of each pick to earlier picks (inf for the first)
    distance_to_selection: np.ndarray  # (N,) float32, each sample's distance to its nearest pick
    stop_reason: str


def samples_to_select(available: int, *, n_samples: int | None, proportion: float | None) -> int:
    """How many to pick: ``nSamples`` capped by what exists, or ``ceil(proportion * N)``."""
    if n_samples is not None:
        return min(n_samples, available)
    if proportion is not None:
        return min(available, math.ceil(proportion * available))
    raise ValueError("one of n_samples or proportion is required")


def _normalised(embeddings: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    return torch.nn.functional.normalize(x, dim=1)


def k_center_greedy(embeddings: np.ndarray, k: int, *, min_distance: float = 0.0) -> KCenterResult:
    """Pick up to ``k`` diverse rows of ``embeddings`` (N, D), deterministically.

    The first pick is the sample nearest the mean direction (a representative
    start, independent of file order). Stops early when the farthest remaining
    sample is within ``min_distance`` of the selection, or when every remaining
    sample duplicates a pick (distance 0): more picks would add no coverage.
    """
    n = embeddings.shape[0]
    if n == 0 or k <= 0:
        empty = np.zeros(0, dtype=np.float32)
        return KCenterResult(
            np.zeros(0, np.int64), empty, np.full(n, np.inf, np.float32), "no samples"
        )
    x = _normalised(embeddings)
    centre = torch.nn.functional.normalize(x.mean(dim=0, keepdim=True), dim=1)[0]
    first = int(torch.argmax(x @ centre)) if bool(centre.any()) else 0
    picks = [first]
    pick_dist = [math.inf]
    # squared distance between unit vectors: |a-b|^2 = 2 - 2 a.b
    min_sq = torch.clamp(2.0 - 2.0 * (x @ x[first]), min=0.0)
    min_sq[first] = 0.0
    reason = f"reached {k} samples"
    threshold_sq = min_distance * min_distance
    while len(picks) < k:
        best = int(torch.argmax(min_sq))
        best_sq = float(min_sq[best])
        if best_sq <= 0.0:
            reason = f"all remaining samples duplicate the selection after {len(picks)} samples"
            break
        if min_distance > 0 and best_sq < threshold_sq:
            reason = f"minDistance {min_distance:g} reached after {len(picks)} samples"
            break
        picks.append(best)
        pick_dist.append(math.sqrt(best_sq))
        torch.minimum(min_sq, torch.clamp(2.0 - 2.0 * (x @ x[best]), min=0.0), out=min_sq)
        min_sq[best] = 0.0
    return KCenterResult(
        indices=np.asarray(picks, dtype=np.int64),
        pick_distances=np.asarray(pick_dist, dtype=np.float32),
        distance_to_selection=torch.sqrt(min_sq).numpy(),
        stop_reason=reason,
    )
