"""The terms of the combined selection objective, one per strategy type.

Every scoring term maps samples to [0, 1] so that ``strength`` alone says how much
a strategy matters (docs/selection.md has the maths). Static terms (weights,
typicality, similarity, random) are computed once; diversity and balance change
with every pick and live in small stateful classes the engine's greedy loop drives.
Embeddings are L2-normalised rows (torch, any device): Euclidean distances between
them lie in [0, 2], as in ``kcenter.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sift_worker.api.v1alpha1 import Strategy
from sift_worker.selection import native

# Typicality: mean distance to this many nearest reference rows (as in TypiClust) ...
TYPICALITY_NEIGHBOURS = 20
# ... estimated against at most this many reference rows, so the cost is N x R, never N x N.
TYPICALITY_REFERENCE_ROWS = 1024
# ... and scaled up to this quantile of density (rows above it score 1).
TYPICALITY_CLIP_QUANTILE = 0.99
_BLOCK_ROWS = 4096
_TILE = 1 << 24  # entries of one block of dot products (64 MB in float32)
_MISSING = -1


# --- values ---


def numeric_values(values: np.ndarray, label: str, key: str) -> np.ndarray:
    """Values as float64 with NaN for missing; categorical text is an error, not a guess."""
    if values.dtype.kind in "fiub":
        return values.astype(np.float64)
    out = np.full(values.shape[0], np.nan)
    for i, v in enumerate(values.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, bool | int | float | np.number):
            out[i] = float(v)
            continue
        raise ValueError(f"{label}: {key!r} has non-numeric value {v!r}; it needs numbers")
    return out


def category_name(value: object) -> str | None:
    """The category a value stands for: text as is, numbers as written (3.0 -> "3")."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | np.number):
        f = float(value)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    return str(value)


def encode_categories(values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sorted category names and (N,) int64 codes into them, -1 where missing."""
    names = [category_name(v) for v in values.tolist()]
    categories = sorted({c for c in names if c is not None})
    index = {c: i for i, c in enumerate(categories)}
    codes = np.array([_MISSING if c is None else index[c] for c in names], dtype=np.int64)
    return categories, codes.reshape(values.shape[0])


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale finite values to [0, 1]; NaN stays NaN. All equal -> all 1 (each is the best)."""
    out = np.full(values.shape[0], np.nan)
    finite = np.isfinite(values)
    if not finite.any():
        return out
    lo, hi = float(values[finite].min()), float(values[finite].max())
    out[finite] = 1.0 if hi <= lo else (values[finite] - lo) / (hi - lo)
    return out


# --- threshold (a filter, not a term) ---


def threshold_excluded(values: np.ndarray, strategy: Strategy, label: str, key: str) -> np.ndarray:
    """(N,) bool: rows this threshold removes. Missing values never pass a threshold."""
    keep = np.ones(values.shape[0], dtype=bool)
    if strategy.min is not None or strategy.max is not None:
        v = numeric_values(values, label, key)
        with np.errstate(invalid="ignore"):
            keep &= ~np.isnan(v)
            if strategy.min is not None:
                keep &= v >= strategy.min
            if strategy.max is not None:
                keep &= v <= strategy.max
    if strategy.in_ is not None:
        allowed = {category_name(_as_number(c)) for c in strategy.in_}
        allowed |= set(strategy.in_)
        names = [category_name(v) for v in values.tolist()]
        keep &= np.array([c is not None and c in allowed for c in names], dtype=bool)
    return ~keep


def _as_number(text: str) -> str | float:
    """``in: ["3"]`` should match a numeric 3.0 in metadata."""
    try:
        return float(text)
    except ValueError:
        return text


# --- static terms ---


def weights_term(values: np.ndarray, strength: float, label: str, key: str) -> np.ndarray:
    """Min-max scaled value. A missing value takes the term that helps least for the
    strength's sign (0 when preferring high, 1 when preferring low): missing never wins."""
    term = minmax(numeric_values(values, label, key))
    term[np.isnan(term)] = 0.0 if strength >= 0 else 1.0
    return term


def random_term(n: int, seed: int | None) -> np.ndarray:
    """Seeded uniform noise: alone it draws a uniform random subset, reproducibly."""
    return np.random.default_rng(0 if seed is None else seed).random(n)


def similarity_term(x: torch.Tensor, query: torch.Tensor) -> np.ndarray:
    """Largest cosine similarity to any query row, min-max scaled over the candidates.

    Both are unit rows, so cosine is a dot product.
    """
    if query.shape[0] == 0:
        raise ValueError("similarity: the query has no embeddings")
    if query.shape[1] != x.shape[1]:
        raise ValueError(
            f"similarity: query embeddings have {query.shape[1]} dimensions, "
            f"candidates {x.shape[1]}"
        )
    q = torch.nn.functional.normalize(query.to(x.device, torch.float32), dim=1)
    best = max_dot(x, q)
    return minmax(best.double().cpu().numpy())


def reference_rows(n: int, limit: int = TYPICALITY_REFERENCE_ROWS) -> np.ndarray:
    """A deterministic subsample (fixed seed, sorted) so typicality is reproducible."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def typicality_term(
    x: torch.Tensor,
    *,
    neighbours: int = TYPICALITY_NEIGHBOURS,
    reference: int = TYPICALITY_REFERENCE_ROWS,
) -> np.ndarray:
    """Density: inverse mean distance to the nearest reference rows, scaled to [0, 1].

    The scale runs from the least dense row to the 99th percentile (denser rows clip
    to 1), so a few near-duplicates, whose inverse distance is huge, cannot squash
    everyone else's term towards 0.

    Reference rows are a fixed subsample, so the cost is N x R x D in row blocks.
    A row never counts itself as a neighbour. With R < N each reference neighbour
    stands for about N/R samples, i.e. density at a coarser but comparable scale.
    """
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.ones(1)
    refs = reference_rows(n, reference)
    ref_x = x[torch.from_numpy(refs).to(x.device)]
    k = max(1, min(neighbours, len(refs) - 1))
    position = torch.full((n,), -1, dtype=torch.long)
    position[torch.from_numpy(refs)] = torch.arange(len(refs))
    position = position.to(x.device)
    mean_dist = torch.empty(n, dtype=torch.float64, device=x.device)
    for start in range(0, n, _BLOCK_ROWS):
        stop = min(n, start + _BLOCK_ROWS)
        dots = x[start:stop] @ ref_x.T
        own = position[start:stop]
        rows = torch.nonzero(own >= 0).flatten()
        dots[rows, own[rows]] = -math.inf  # not its own neighbour
        # nearest by distance = largest dot product; convert only the k kept
        nearest = torch.topk(dots, k, dim=1).values
        dist = torch.sqrt(torch.clamp(2.0 - 2.0 * nearest, min=0.0))
        mean_dist[start:stop] = dist.mean(dim=1).double()
    density = 1.0 / (mean_dist.cpu().numpy() + 1e-3)
    lo, hi = float(density.min()), float(np.quantile(density, TYPICALITY_CLIP_QUANTILE))
    if hi <= lo:
        return np.ones(n)
    return np.clip((density - lo) / (hi - lo), 0.0, 1.0)


# --- dynamic terms ---


def max_dot(x: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """(N,) largest dot product of each row of ``x`` with any row of ``others``, in tiles
    of at most ``_TILE`` entries so memory stays bounded for any N and M."""
    best = torch.full((x.shape[0],), -math.inf, device=x.device)
    cols = max(1, min(others.shape[0], 2048))
    rows = max(1, _TILE // cols)
    for c in range(0, others.shape[0], cols):
        block = others[c : c + cols].T
        for r in range(0, x.shape[0], rows):
            part = (x[r : r + rows] @ block).amax(dim=1)
            torch.maximum(best[r : r + rows], part, out=best[r : r + rows])
    return best


def squared_distance_to(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N,) squared distance of each unit row to its nearest unit centre: 2 - 2 max dot."""
    return torch.clamp(2.0 - 2.0 * max_dot(x, centres), min=0.0)


class Diversity:
    """Distance of every row to its nearest pick or pool row, one matvec per pick.

    The term is that distance divided by the largest among the rows still open, so
    the farthest open row scores 1 at every step. Before anything is picked (and with
    no pool) nothing is "far" yet: the term is then closeness to the mean direction,
    which makes the first pick the one k-center greedy starts from.
    """

    def __init__(self, x: torch.Tensor, pool: torch.Tensor | None) -> None:
        self.x = x
        # 2 - 2 * max dot: the squared distance, before clamping rounding error below 0
        self.min_sq: torch.Tensor | None = None
        pool_dot = None
        if pool is not None and pool.shape[0] > 0:
            pool_dot = max_dot(x, pool)
            self.min_sq = 2.0 - 2.0 * pool_dot
        self._two = torch.full((x.shape[0],), 2.0, device=x.device)
        self._buf = torch.empty(x.shape[0], device=x.device)
        self._step = torch.empty(x.shape[0], device=x.device)
        # on CPU the C kernel keeps max x.pick in one read of x (min_sq = 2 - 2 maxdot:
        # the same floats, as rounding is monotone); torch's gemv streams ~2x slower
        self._maxdot: np.ndarray | None = None
        if native.kernels is not None and x.device.type == "cpu" and x.is_contiguous():
            self._maxdot = np.full(x.shape[0], -np.inf, np.float32)
            if pool_dot is not None:
                self._maxdot[:] = pool_dot.numpy()

    def farthest_sq(self, open_rows: torch.Tensor | None) -> float:
        """Largest squared distance among open rows (all when None); inf before any pick."""
        if self.min_sq is None:
            return math.inf
        values = self.min_sq if open_rows is None else torch.where(open_rows, self.min_sq, -1.0)
        return max(0.0, float(values.max()))

    def term(self, farthest_sq: float, open_rows: torch.Tensor | None) -> torch.Tensor:
        """(N,) term in [0, 1] for open rows; valid until the next call."""
        if self.min_sq is None:
            return self._centrality(open_rows)
        if farthest_sq <= 0.0:
            return self._buf.zero_()
        torch.clamp(self.min_sq, min=0.0, out=self._buf)
        return self._buf.sqrt_().mul_(1.0 / math.sqrt(farthest_sq))

    def _centrality(self, open_rows: torch.Tensor | None) -> torch.Tensor:
        rows = self.x if open_rows is None else self.x[open_rows]
        centre = torch.nn.functional.normalize(rows.mean(dim=0), dim=0)
        if not bool(centre.any()):
            return self._buf.fill_(1.0)
        closeness = self.x @ centre
        inside = closeness if open_rows is None else closeness[open_rows]
        lo, hi = float(inside.min()), float(inside.max())
        if hi <= lo:
            return self._buf.fill_(1.0)
        return self._buf.copy_((closeness - lo) / (hi - lo))

    def add(self, row: int) -> None:
        """One matvec: ``2 - 2 x.x_row`` fused, then an in-place minimum."""
        if self._maxdot is not None:
            xs = self.x.numpy()
            native.update_max_dot(xs, xs[row], self._maxdot, torch.get_num_threads())
            self._maxdot[row] = 1.0
            maxdot = torch.from_numpy(self._maxdot)
            if self.min_sq is None:
                self.min_sq = torch.empty_like(maxdot)
            torch.mul(maxdot, -2.0, out=self.min_sq).add_(2.0)
            return
        torch.addmv(self._two, self.x, self.x[row], alpha=-2.0, out=self._step)
        if self.min_sq is None:
            self.min_sq = self._step.clone()
        else:
            torch.minimum(self.min_sq, self._step, out=self.min_sq)
        self.min_sq[row] = 0.0

    def distances(self) -> torch.Tensor | None:
        """(N,) distance to the nearest pick or pool row, or None when there is neither."""
        if self.min_sq is None:
            return None
        return torch.sqrt(torch.clamp(self.min_sq, min=0.0))


def quotas(shares: np.ndarray, supply: np.ndarray, n: int) -> np.ndarray:
    """Integer picks per category: ``n`` split by ``shares``, capped by ``supply``.

    Largest-remainder rounding keeps every uncapped quota within one of its exact
    share; a category with too few samples gets all of them and its shortfall is
    spread over the others in proportion to their shares (water filling).
    """
    shares = np.asarray(shares, dtype=np.float64)
    supply = np.asarray(supply, dtype=np.int64)
    q = np.zeros(len(shares), dtype=np.int64)
    active = (shares > 0) & (supply > 0)
    left = int(min(n, int(supply[active].sum())))
    while left > 0 and active.any():
        ideal = np.where(active, left * shares / shares[active].sum(), 0.0)
        room = supply - q
        full = active & (ideal >= room)
        if full.any():
            q[full] += room[full]
            left -= int(room[full].sum())
            active &= ~full
            continue
        base = np.floor(ideal).astype(np.int64)
        q += base
        extra = left - int(base.sum())
        remainder = np.where(active, ideal - base, -1.0)
        order = np.lexsort((np.arange(len(shares)), -shares, -remainder))
        q[order[:extra]] += 1
        left = 0
    return q


class Balance:
    """Hard per-category quotas, plus a soft term that favours the category furthest
    behind its quota so every prefix of the selection stays close to the target.

    Only rows whose category is below its quota are eligible; rows with a missing
    category (or one without a quota) never are.
    """

    def __init__(self, codes: np.ndarray, quota: np.ndarray) -> None:
        self.codes = codes  # (N,) int64, -1 missing
        self.quota = quota  # (C,) int64
        self.counts = np.zeros_like(quota)

    def slots(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """Category slot of each row; slot C stands for "missing" and is never open."""
        codes = self.codes[rows]
        return torch.from_numpy(np.where(codes < 0, len(self.quota), codes)).to(device)

    def open_categories(self) -> np.ndarray:
        """(C + 1,) bool: categories still below quota (the missing slot never is)."""
        return np.append(self.counts < self.quota, False)

    def category_terms(self) -> np.ndarray:
        """(C + 1,) share of each category's quota still open: 1 untouched, 0 full."""
        open_share = np.zeros(len(self.quota) + 1)
        has = self.quota > 0
        open_share[:-1][has] = 1.0 - self.counts[has] / self.quota[has]
        return open_share

    def add(self, row: int) -> None:
        code = int(self.codes[row])
        if code >= 0:
            self.counts[code] += 1


def balance_quotas(
    values: np.ndarray, strategy: Strategy, eligible: np.ndarray, n: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories, (N,) codes and per-category quotas for one balance strategy.

    Supply is what passed the thresholds. ``target`` shares are normalised (a category
    it does not name gets share 0, so none is picked); ``uniform`` gives every category
    present the same share; ``input`` keeps the candidates' own proportions.
    """
    categories, codes = encode_categories(values)
    supply = np.bincount(codes[eligible & (codes >= 0)], minlength=len(categories))
    if strategy.target is not None:
        shares = np.array([strategy.target.get(c, 0.0) for c in categories], dtype=np.float64)
    elif strategy.distribution == "input":
        shares = supply.astype(np.float64)
    else:
        shares = (supply > 0).astype(np.float64)
    return categories, codes, quotas(shares, supply, n)
