"""The selection engine: thresholds, then one greedy loop over a combined objective.

At each step the engine picks, among the rows still eligible, the one maximising
``sum_s strength_s * term_s(row)`` where every term lies in [0, 1] (see
``strategies.py`` and docs/selection.md). Thresholds filter before anything is
scored; balance quotas restrict eligibility step by step. Three paths give the same
answer as that loop, as cheaply as the strategies allow:

* pure diversity (only diversity has a non-zero strength, no balance) calls
  ``k_center_greedy`` on the eligible rows, the tuned fast path;
* no diversity at all: the objective per row never changes, so a sort (or, with
  balance, a merge of per-category sorted lists) replaces the O(k x N) loop;
* otherwise the general loop: one matvec per pick, O(k x N x D), never N x N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from sift_worker.api.v1alpha1 import SelectionSpec, StrategyEntry
from sift_worker.selection import strategies as st
from sift_worker.selection.kcenter import k_center_greedy
from sift_worker.selection.types import Candidates, Selection, value_key

# Sift's answer to a plain "pick n" (empty ``strategies``): diversity tempered by
# typicality. Pure k-center spends small budgets on outliers and then loses to random
# selection; a typicality term of this strength makes it prefer far-apart *typical*
# samples while keeping the covering radius far below random's
# (benchmarks/bench_quality.py, docs/selection.md).
DEFAULT_TYPICALITY_STRENGTH = 0.25
DEFAULT_STRATEGIES: tuple[StrategyEntry, ...] = (
    StrategyEntry.model_validate(
        {"input": {"type": "embeddings"}, "strategy": {"type": "diversity", "strength": 1.0}}
    ),
    StrategyEntry.model_validate(
        {
            "input": {"type": "embeddings"},
            "strategy": {"type": "typicality", "strength": DEFAULT_TYPICALITY_STRENGTH},
        }
    ),
)


# Without diversity nothing tracks distances, so they cost a separate N x (k + pool)
# pass; past this many pairs (1M samples x 1,000 picks) they are reported as NaN.
DISTANCE_PAIRS_LIMIT = 1_000_000_000


def default_strategies() -> list[StrategyEntry]:
    """The recommended default as a fresh list, for a SelectionSpec without strategies."""
    return list(DEFAULT_STRATEGIES)


@dataclass
class _Plan:
    """Everything the loop needs, after values are resolved and thresholds applied."""

    embeddings: np.ndarray  # (N, D) as given
    device: torch.device
    pool: torch.Tensor | None  # (M, D) unit rows
    eligible: np.ndarray  # (N,) bool after thresholds
    excluded: dict[str, np.ndarray] = field(default_factory=dict)
    static: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)
    diversity: dict[str, float] = field(default_factory=dict)
    min_distance: float = 0.0
    balance: dict[str, tuple[float, st.Balance]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # scoring labels, in spec order

    @cached_property
    def x(self) -> torch.Tensor:
        """(N, D) unit rows on the device; built on first use (pure diversity may not)."""
        return _unit_rows(self.embeddings, self.device)

    def static_sum(self) -> np.ndarray:
        total = np.zeros(self.embeddings.shape[0])
        for strength, term in self.static.values():
            if strength != 0:
                total += strength * term
        return total


@dataclass
class _Result:
    picks: list[int]
    contributions: dict[str, list[float]]
    stop_reason: str
    distance: np.ndarray | None = None  # (N,) to picks and pool, when the path tracked it


def select(
    candidates: Candidates,
    selection: SelectionSpec,
    *,
    n: int,
    pool_embeddings: np.ndarray | None = None,
    query_embeddings: np.ndarray | None = None,
    device: str | torch.device | None = None,
) -> Selection:
    """Pick up to ``n`` rows of ``candidates`` by ``selection.strategies``, in pick order.

    ``pool_embeddings`` (M, D) were selected by earlier runs: diversity measures
    distance to them as if already picked. ``query_embeddings`` are the similarity
    query. An empty strategy list means ``DEFAULT_STRATEGIES``. ``device`` (default:
    CUDA when available) runs the distance work. Raises ValueError naming the
    strategy when the values it reads are absent or unusable.
    """
    entries = list(selection.strategies) or default_strategies()
    plan = _plan(candidates, entries, n, pool_embeddings, query_embeddings, device)
    if n <= 0:
        result = _Result([], {label: [] for label in plan.order}, "reached 0 samples")
    elif not plan.diversity:
        result = _static_loop(plan, n)
    elif _pure_diversity(plan):
        result = _kcenter_path(plan, candidates.embeddings, pool_embeddings, n)
    else:
        result = _greedy_loop(plan, n)
    picks = np.asarray(result.picks, dtype=np.int64)
    contributions = {
        label: np.asarray(result.contributions[label], dtype=np.float64) for label in plan.order
    }
    objective = np.zeros(len(picks))
    for values in contributions.values():
        objective += values
    return Selection(
        indices=picks,
        objective=objective,
        contributions=contributions,
        excluded=plan.excluded,
        distance_to_selection=(
            result.distance if result.distance is not None else _distance_to_selection(plan, picks)
        ),
        stop_reason=result.stop_reason,
    )


# --- planning ---


def _values(candidates: Candidates, entry: StrategyEntry, label: str) -> tuple[np.ndarray, str]:
    inp = entry.input
    key = value_key(inp.type, inp.key, inp.score)
    if key not in candidates.values:
        raise ValueError(f"{label}: no values for {key!r} (nothing was loaded for this input)")
    values = np.asarray(candidates.values[key])
    if values.ndim != 1 or values.shape[0] != len(candidates.ids):
        raise ValueError(
            f"{label}: {key!r} has shape {values.shape}, expected ({len(candidates.ids)},)"
        )
    return values, key


def _unit_rows(embeddings: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)
    return torch.nn.functional.normalize(x, dim=1)


def _plan(
    candidates: Candidates,
    entries: list[StrategyEntry],
    n: int,
    pool_embeddings: np.ndarray | None,
    query_embeddings: np.ndarray | None,
    device: str | torch.device | None,
) -> _Plan:
    count = len(candidates.ids)
    emb = np.asarray(candidates.embeddings)
    if emb.ndim != 2 or emb.shape[0] != count:
        raise ValueError(f"embeddings have shape {emb.shape}, expected ({count}, D)")
    if device is None:  # as k_center_greedy: the GPU when there is one
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    pool = None
    if pool_embeddings is not None and len(pool_embeddings) > 0:
        if pool_embeddings.ndim != 2 or pool_embeddings.shape[1] != emb.shape[1]:
            raise ValueError(
                f"pool embeddings have shape {pool_embeddings.shape}, expected (M, {emb.shape[1]})"
            )
        pool = _unit_rows(pool_embeddings, dev)
    plan = _Plan(embeddings=emb, device=dev, pool=pool, eligible=np.ones(count, dtype=bool))
    labels = [f"{e.strategy.type}[{i}]" for i, e in enumerate(entries)]

    # thresholds first: balance supply and the diversity start depend on what passes
    for label, entry in zip(labels, entries, strict=True):
        if entry.strategy.type == "threshold":
            values, key = _values(candidates, entry, label)
            mask = st.threshold_excluded(values, entry.strategy, label, key)
            plan.excluded[label] = mask
            plan.eligible &= ~mask

    typicality: np.ndarray | None = None
    for label, entry in zip(labels, entries, strict=True):
        s = entry.strategy
        if s.type == "threshold":
            continue
        plan.order.append(label)
        if s.type == "diversity":
            plan.diversity[label] = s.strength
            plan.min_distance = max(plan.min_distance, s.min_distance or 0.0)
        elif s.type == "weights":
            values, key = _values(candidates, entry, label)
            plan.static[label] = (s.strength, st.weights_term(values, s.strength, label, key))
        elif s.type == "random":
            plan.static[label] = (s.strength, st.random_term(count, s.seed))
        elif s.type == "typicality":
            if typicality is None and s.strength != 0:
                typicality = st.typicality_term(plan.x)
            term = typicality if typicality is not None else np.zeros(count)
            plan.static[label] = (s.strength, term)
        elif s.type == "similarity":
            if query_embeddings is None or len(query_embeddings) == 0:
                raise ValueError(f"{label}: no query embeddings (query.filenames or .embeddings)")
            query = torch.from_numpy(np.ascontiguousarray(query_embeddings, dtype=np.float32))
            try:
                plan.static[label] = (s.strength, st.similarity_term(plan.x, query))
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from exc
        elif s.type == "balance":
            values, _ = _values(candidates, entry, label)
            _, codes, quota = st.balance_quotas(values, s, plan.eligible, n)
            plan.balance[label] = (s.strength, st.Balance(codes, quota))
    return plan


def _pure_diversity(plan: _Plan) -> bool:
    """Only diversity scores (others at strength 0): exactly k-center greedy."""
    return (
        not plan.balance
        and all(s > 0 for s in plan.diversity.values())
        and all(s == 0 for s, _ in plan.static.values())
    )


# --- paths ---


def _kcenter_path(
    plan: _Plan,
    embeddings: np.ndarray,
    pool_embeddings: np.ndarray | None,
    n: int,
) -> _Result:
    rows = np.flatnonzero(plan.eligible)
    k = min(n, len(rows))
    if k == 0:
        return _Result([], {label: [] for label in plan.order}, _no_eligible(0))
    result = k_center_greedy(
        embeddings if len(rows) == len(embeddings) else embeddings[rows],  # no copy
        k,
        min_distance=plan.min_distance,
        initial_centers=pool_embeddings if plan.pool is not None else None,
        device=plan.device,
        precision="auto",  # int8 scans on large CPU inputs: the same picks, about 2x faster
    )
    picks = rows[result.indices].tolist()
    distance = _distance_to_selection(plan, np.asarray(picks, dtype=np.int64), ~plan.eligible)
    distance[rows] = result.distance_to_selection
    reason = result.stop_reason
    if len(picks) == k < n and reason.startswith("reached"):
        reason = _no_eligible(k)
    contributions = {
        label: [plan.diversity.get(label, 0.0)] * len(picks)  # the pick is always the farthest
        for label in plan.order
    }
    return _Result(picks, contributions, reason, distance)


def _static_loop(plan: _Plan, n: int) -> _Result:
    """No diversity: each row's objective is fixed apart from balance, which only
    depends on its category. So merge per-category lists sorted by the fixed part,
    comparing one head per category: O(N log N + k x groups) instead of O(k x N)."""
    static = plan.static_sum()
    rows = np.flatnonzero(plan.eligible)
    contributions: dict[str, list[float]] = {label: [] for label in plan.order}
    if not plan.balance:  # a plain ranking; lowest row first among ties, as argmax
        top = rows[np.lexsort((rows, -static[rows]))][:n].tolist()
        for label in plan.order:
            contributions[label] = [_static_contribution(plan, label, row) for row in top]
        reason = f"reached {n} samples" if len(top) == n else _no_eligible(len(top))
        return _Result(top, contributions, reason)
    balances = list(plan.balance.values())
    codes = np.stack([b.codes for _, b in balances], axis=1)
    rows = rows[(codes[rows] >= 0).all(axis=1)]
    groups, group_of = np.unique(codes[rows], axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    # by group, then best fixed objective, then lowest row
    ordered = rows[np.lexsort((rows, -static[rows], group_of))]
    sizes = np.bincount(group_of, minlength=len(groups))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    heads, ends = starts.copy(), starts + sizes
    picks: list[int] = []
    reason = f"reached {n} samples"
    while len(picks) < n:
        live = heads < ends
        score = np.zeros(len(groups))
        for j, (strength, b) in enumerate(balances):
            live &= b.open_categories()[groups[:, j]]
            score += strength * b.category_terms()[groups[:, j]]
        if not live.any():
            reason = _no_eligible(len(picks))
            break
        head_rows = ordered[np.minimum(heads, len(ordered) - 1)]
        score += static[head_rows]
        score[~live] = -math.inf
        tied = np.flatnonzero(score == score.max())
        g = int(tied[np.argmin(head_rows[tied])])
        row = int(head_rows[g])
        for label in plan.order:
            contributions[label].append(_static_contribution(plan, label, row))
        for j, (label, (strength, b)) in enumerate(plan.balance.items()):
            contributions[label][-1] = strength * float(b.category_terms()[groups[g, j]])
        picks.append(row)
        heads[g] += 1
        for _, b in balances:
            b.add(row)
    return _Result(picks, contributions, reason)


def _static_contribution(plan: _Plan, label: str, row: int) -> float:
    if label in plan.static:
        strength, term = plan.static[label]
        return strength * float(term[row])
    return 0.0


def _greedy_loop(plan: _Plan, n: int) -> _Result:
    """The general case: diversity and balance change after every pick.

    Works on the rows that passed the thresholds only; a picked row's fixed part
    becomes -inf so it can never win again, which saves a mask per step.
    """
    dev = plan.device
    rows = np.flatnonzero(plan.eligible)
    rows_t = torch.from_numpy(rows).to(dev)
    static = torch.from_numpy(plan.static_sum()[rows]).to(dev, torch.float32)
    diversity = st.Diversity(plan.x if len(rows) == len(plan.x) else plan.x[rows_t], plan.pool)
    div_strength = sum(plan.diversity.values())
    balances = [(label, s, b, b.slots(rows, dev)) for label, (s, b) in plan.balance.items()]
    available = torch.ones(len(rows), dtype=torch.bool, device=dev)
    objective = torch.empty(len(rows), device=dev)
    picks: list[int] = []
    contributions: dict[str, list[float]] = {label: [] for label in plan.order}
    reason = f"reached {n} samples"
    while len(picks) < n:
        open_rows: torch.Tensor | None = None
        if balances:
            open_rows = available.clone()
            for _, _, b, slot in balances:
                open_rows &= torch.from_numpy(b.open_categories()).to(dev)[slot]
            has_open = bool(open_rows.any())
        else:
            has_open = len(picks) < len(rows)
        if not has_open:
            reason = _no_eligible(len(picks))
            break
        farthest_sq = diversity.farthest_sq(open_rows)
        if div_strength > 0 and farthest_sq <= 0.0:
            reason = f"all remaining samples duplicate the selection after {len(picks)} samples"
            break
        if plan.min_distance > 0 and farthest_sq < plan.min_distance**2:
            reason = f"minDistance {plan.min_distance:g} reached after {len(picks)} samples"
            break
        div_term = diversity.term(farthest_sq, open_rows)
        torch.mul(div_term, div_strength, out=objective).add_(static)
        balance_terms: dict[str, np.ndarray] = {}
        for label, strength, b, slot in balances:
            balance_terms[label] = b.category_terms()
            if strength != 0:
                terms = torch.from_numpy(balance_terms[label]).to(dev, torch.float32)
                objective.add_(strength * terms[slot])
        if open_rows is not None:
            objective.masked_fill_(~open_rows, -math.inf)
        at = int(torch.argmax(objective))
        row = int(rows[at])
        for label in plan.order:
            if label in plan.diversity:
                value = plan.diversity[label] * float(div_term[at])
            elif label in balance_terms:
                strength, b = plan.balance[label]
                value = strength * float(balance_terms[label][b.codes[row]])  # -1: missing slot
            else:
                value = _static_contribution(plan, label, row)
            contributions[label].append(value)
        picks.append(row)
        static[at] = -math.inf
        available[at] = False
        diversity.add(at)
        for _, _, b, _ in balances:
            b.add(row)
    distance = _distance_to_selection(plan, np.asarray(picks, dtype=np.int64), ~plan.eligible)
    inside = diversity.distances()
    if inside is not None:
        distance[rows] = inside.cpu().numpy()
    return _Result(picks, contributions, reason, distance)


def _no_eligible(picked: int) -> str:
    return f"no eligible samples left after {picked} samples"


def _distance_to_selection(
    plan: _Plan, picks: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """(N,) distance of every candidate (filtered ones too) to its nearest pick or pool row;
    only ``rows`` (a bool mask) are computed when given, the rest left at inf. NaN past
    ``DISTANCE_PAIRS_LIMIT`` pairs (a huge ranking without diversity)."""
    count = plan.embeddings.shape[0]
    out = np.full(count, np.inf, dtype=np.float32)
    mask = np.ones(count, dtype=bool) if rows is None else rows
    if not mask.any() or (len(picks) == 0 and plan.pool is None):
        return out
    pool_rows = 0 if plan.pool is None else plan.pool.shape[0]
    if int(mask.sum()) * (len(picks) + pool_rows) > DISTANCE_PAIRS_LIMIT:
        out[mask] = np.nan  # unknown: exact would cost more than the selection itself
        out[picks] = 0.0
        return out
    centres = [plan.x[torch.from_numpy(picks).to(plan.x.device)]]
    if plan.pool is not None:
        centres.append(plan.pool)
    stacked = torch.cat(centres)
    x = plan.x if rows is None else plan.x[torch.from_numpy(mask).to(plan.x.device)]
    out[mask] = torch.sqrt(st.squared_distance_to(x, stacked)).cpu().numpy()
    out[picks] = 0.0
    return out
