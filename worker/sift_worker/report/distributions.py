"""Count per-sample values before and after selection, for the report's bar charts.

Pure numpy helpers: the pipeline calls them with a column of per-sample values
(metadata, scores, predicted classes) and the selection, and wraps the result in
a :class:`~sift_worker.report.render.Distribution`. Numeric columns are binned
into a few ranges with round edges; categorical ones keep their most frequent
values and lump the rest into "other". Missing values (NaN, None, "") are
counted in a "missing" bucket, always last, so the counts always add up to the
number of candidates and to the number selected.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from sift_worker.report.render import Distribution

__all__ = ["MISSING", "OTHER", "bin_numeric", "categorical_counts", "make_distribution"]

#: Category for samples without a value.
MISSING = "missing"
#: Category for the less frequent values beyond ``max_categories``.
OTHER = "other"

_DASH = "\u2013"  # en dash between the ends of a range
_Counts = tuple[list[str], list[int], list[int]]
# Round step multipliers per decade, smallest first.
_STEPS = (1.0, 2.0, 2.5, 5.0)


def _selected_codes(codes: npt.NDArray[np.intp], selected: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The codes of the selected rows: ``selected`` is a bool mask or row indices."""
    sel = np.asarray(selected)
    if sel.dtype == np.bool_:
        if sel.shape != codes.shape:
            raise ValueError(
                f"a boolean selection must have one entry per value: {sel.shape} vs {codes.shape}"
            )
        picked: npt.NDArray[Any] = codes[sel]
        return picked
    if sel.size == 0:
        return codes[:0]
    if not np.issubdtype(sel.dtype, np.integer):
        raise ValueError(f"selected must be a boolean mask or integer indices, not {sel.dtype}")
    picked = codes[sel.reshape(-1)]
    return picked


def _count(
    codes: npt.NDArray[np.intp], selected: npt.NDArray[Any], n_categories: int
) -> tuple[list[int], list[int]]:
    before = np.bincount(codes, minlength=n_categories)
    after = np.bincount(_selected_codes(codes, selected), minlength=n_categories)
    return [int(c) for c in before], [int(c) for c in after]


def _nice_step(lo: float, top: float, bins: int, integer: bool) -> float:
    """Smallest round step (1, 2, 2.5, 5 x 10^k) whose grid covers [lo, top] in <= bins.

    Terminates for ``bins >= 2``: a step over twice the largest magnitude needs
    at most two bins.
    """
    raw = (top - lo) / bins
    exponent = math.floor(math.log10(raw)) if raw > 0 else 0
    while True:
        for m in _STEPS:
            step = m * 10.0**exponent
            if integer and (step < 1 or not step.is_integer()):
                continue
            n = math.ceil(top / step - 1e-9) - math.floor(lo / step + 1e-9)
            if step >= raw and n <= bins:
                return step
        exponent += 1


def _decimals(edges: list[float]) -> int:
    """Fewest decimals that print every edge exactly."""
    for d in range(13):
        if all(abs(round(e, d) - e) <= 1e-9 * max(1.0, abs(e)) for e in edges):
            return d
    return 12


def _fmt_value(value: float, decimals: int) -> str:
    text = f"{value:.{min(decimals, 6)}f}"
    return "0" if float(text) == 0 else text  # no "-0"


def _compact(value: float) -> str:
    """Round edges of large ranges as 250k, 1.5M, 2G."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.0f}"


def bin_numeric(
    values: npt.NDArray[Any], selected: npt.NDArray[Any], bins: int = 8
) -> tuple[list[str], list[int], list[int]]:
    """Histogram ``values`` over all candidates and over ``selected`` with the same bins.

    ``selected`` is a boolean mask over ``values`` or an array of row indices.
    Returns ``(labels, before, after)`` in ascending order. Columns with at most
    ``bins`` distinct values get one bar per value; otherwise at most ``bins``
    equal ranges with round edges, labelled with an en dash (``"0.2\u20130.4"``).
    Integer columns get inclusive labels (``"10\u201319"``), steps of 1,000 or
    more are written ``"20k\u201340k"``, and a grid starting below zero spells
    out ``"-5 to 0"``. Each range includes its lower edge, the last one also its
    upper edge. NaN and None count as ``"missing"`` (last); infinities fall into
    the outermost ranges.
    """
    if bins < 1:
        raise ValueError("bins must be >= 1")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    missing = np.isnan(x)
    finite = x[np.isfinite(x)]
    codes = np.zeros(x.shape, dtype=np.intp)
    labels: list[str]
    if finite.size == 0:
        labels = []
    else:
        distinct = np.unique(finite)
        integer = bool(np.all(distinct == np.round(distinct)))
        if distinct.size <= bins:
            labels = [f"{v:.0f}" if integer else f"{v:.6g}" for v in distinct.tolist()]
            inner = (distinct[:-1] + distinct[1:]) / 2  # nearest distinct value
        else:
            lo, hi = float(distinct[0]), float(distinct[-1])
            # An integer value v stands for [v, v + 1), so "0-9" and "10-19" tile.
            top = hi + 1 if integer else hi
            if bins == 1:  # a round grid may need two bins to straddle zero
                edges = [lo, top]
            else:
                step = _nice_step(lo, top, bins, integer)
                k0 = math.floor(lo / step + 1e-9)
                k1 = math.ceil(top / step - 1e-9)
                edges = [float(f"{(k0 + i) * step:.12g}") for i in range(k1 - k0 + 1)]
            inner = np.asarray(edges[1:-1])
            decimals = _decimals(edges)
            big = len(edges) > 2 and edges[1] - edges[0] >= 1000
            if integer and not big:
                labels = [
                    f"{a:.0f}" if b - a == 1 else f"{a:.0f}{_DASH}{b - 1:.0f}"
                    for a, b in itertools.pairwise(edges)
                ]
            else:
                sep = " to " if edges[0] < 0 else _DASH
                text = [_compact(e) if big else _fmt_value(e, decimals) for e in edges]
                labels = [f"{a}{sep}{b}" for a, b in itertools.pairwise(text)]
        codes = np.searchsorted(inner, np.where(missing, 0.0, x), side="right").astype(np.intp)
    if missing.any():
        codes[missing] = len(labels)
        labels.append(MISSING)
    before, after = _count(codes, selected, len(labels))
    return labels, before, after


def categorical_counts(
    values: npt.NDArray[Any], selected: npt.NDArray[Any], max_categories: int = 20
) -> tuple[list[str], list[int], list[int]]:
    """Count each category over all candidates and over ``selected``.

    ``selected`` is a boolean mask over ``values`` or an array of row indices.
    Returns ``(labels, before, after)``: the ``max_categories`` most frequent
    values (most frequent first, ties by name), then ``"other"`` for the rest
    and ``"missing"`` for None, NaN and empty strings, each only when non-empty.
    Values are compared as text, so 3 and "3" are one category. Should a real
    value be called "other" or "missing", the bucket is shown as "(other)" or
    "(missing)" instead.
    """
    if max_categories < 1:
        raise ValueError("max_categories must be >= 1")
    obj = np.asarray(values, dtype=object).reshape(-1)
    # Elementwise on object arrays: None == None, and NaN is the only value != itself.
    missing = np.asarray((obj == None) | (obj != obj) | (obj == ""), dtype=bool)  # noqa: E711
    present = obj[~missing].astype(str)
    names, inverse, counts = np.unique(present, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")  # np.unique sorted names: ties by name
    kept = order[:max_categories]
    labels = [str(names[i]) for i in kept]
    rank = np.full(names.size, len(labels), dtype=np.intp)
    rank[kept] = np.arange(len(labels))
    codes = np.empty(obj.shape, dtype=np.intp)
    codes[~missing] = rank[inverse.reshape(-1)]
    if names.size > len(labels):
        labels.append(f"({OTHER})" if OTHER in labels else OTHER)
    if missing.any():
        codes[missing] = len(labels)
        labels.append(f"({MISSING})" if MISSING in labels else MISSING)
    before, after = _count(codes, selected, len(labels))
    return labels, before, after


def make_distribution(
    name: str,
    values: npt.NDArray[Any],
    selected: npt.NDArray[Any],
    *,
    target: Mapping[Any, float] | None = None,
    bins: int = 8,
    max_categories: int = 20,
) -> Distribution:
    """Build a report :class:`Distribution` for one column of per-sample values.

    Float and integer columns are binned with :func:`bin_numeric`; anything else
    (strings, objects, booleans) is counted with :func:`categorical_counts`.
    ``target`` maps category values (compared as text) to balance target shares;
    categories it does not name get no target mark. Targets apply to categorical
    columns only.
    """
    arr = np.asarray(values)
    counts: _Counts
    if arr.dtype.kind in "fiu":
        counts = bin_numeric(arr, selected, bins)
    else:
        counts = categorical_counts(arr, selected, max_categories)
    labels, before, after = counts
    shares: list[float] | None = None
    if target:
        by_text = {str(k): float(v) for k, v in target.items()}
        shares = [by_text.get(label, math.nan) for label in labels]
    return Distribution(name=name, categories=labels, before=before, after=after, target=shares)
