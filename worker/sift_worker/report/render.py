"""Render a run's results as one self-contained HTML file.

The report is opened from users' private clusters, often on sensitive data, so
it must never reach the network: thumbnails are inlined as ``data:`` URIs, all
CSS is inline, there is no JavaScript, and a Content-Security-Policy meta tag
forbids any fetch even if a browser would otherwise try. All geometry is
computed here; the Jinja template (autoescaped) only lays it out.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import importlib.resources
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_THUMBNAILS",
    "Distribution",
    "DuplicateRow",
    "ReportData",
    "StrategyEffect",
    "Thumbnail",
    "render_report",
]

#: Default cap on embedded thumbnails: each costs a few KB of base64.
MAX_THUMBNAILS = 500
#: Corrupt files listed in the table; beyond this the page only gives a count.
MAX_CORRUPT_ROWS = 1_000
#: Duplicate pairs listed in the table; beyond this the page only gives a count.
MAX_DUPLICATE_ROWS = 500
#: Unusable metadata/prediction files listed; beyond this only a count.
MAX_PROBLEM_ROWS = 1_000
#: Bars per distribution chart; callers normally bucket long tails into "other".
MAX_DISTRIBUTION_CATEGORIES = 40
#: Selected points labelled with their rank on the map (more would clutter it).
_LABELLED_RANKS = 10
#: Vertices kept in the coverage curve's polyline.
_MAX_CURVE_VERTICES = 1_000
#: Thumbnail captions shorten longer names in the middle, keeping the extension
#: visible (the full path is in the tooltip).
_SHORT_NAME = 20
_SHORT_FOLDER = 22

# Map geometry, in SVG user units (the SVG scales to its container).
_MAP_W, _MAP_H, _MAP_PAD = 720.0, 500.0, 16.0
# Coverage chart geometry.
_CH_W, _CH_H = 380.0, 250.0
_CH_LEFT, _CH_RIGHT, _CH_TOP, _CH_BOTTOM = 50.0, 16.0, 12.0, 44.0

# Distribution chart geometry: label column, bar area, then room for the share text.
_DI_W, _DI_LABEL_X, _DI_X0, _DI_X1 = 360.0, 100.0, 106.0, 318.0
_DI_TOP, _DI_ROW, _DI_BAR, _DI_GAP = 20.0, 27.0, 8.0, 2.0
_DI_FONT = 12.0  # category label font size (matches .dchart .cat in the template)

_KNOWN_COUNTS = ("listed", "decoded", "corrupt", "selected")
# Counters with a card of their own, in funnel order (see _counts_context).
_DUPLICATES_KEYS = ("duplicates", "duplicates_removed")
_STAGE_COLOURS = ("#3b5bdb", "#0c8599", "#e8590c", "#5f3dc4", "#2b8a3e", "#c2255c", "#868e96")


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """Preview of one selected sample; ``rank`` is its 1-based selection order."""

    filename: str
    rank: int
    jpeg: bytes


@dataclasses.dataclass(frozen=True)
class Distribution:
    """Counts per category among all candidates and in the selection, for one input.

    ``categories`` are drawn in the given order (bin numeric inputs first, e.g.
    with :func:`sift_worker.report.distributions.bin_numeric`). ``target`` holds
    a balance strategy's target share (0..1) per category; NaN means no target
    for that category.
    """

    name: str
    categories: Sequence[str]
    before: Sequence[int]
    after: Sequence[int]
    target: Sequence[float] | None = None


@dataclasses.dataclass(frozen=True)
class DuplicateRow:
    """A candidate dropped as a duplicate of ``original`` (kind "exact" or "near")."""

    filename: str
    original: str
    kind: str
    distance: float


@dataclasses.dataclass(frozen=True)
class StrategyEffect:
    """How much one strategy weighed in the picks.

    ``mean_contribution`` is the mean over picks of its term in the objective and
    ``share`` its share (0..1) of the total objective over picks; ``excluded`` is
    how many samples a threshold filtered out (None for other strategies).
    """

    label: str
    description: str
    mean_contribution: float
    share: float
    excluded: int | None = None


# eq=False: the numpy fields make generated __eq__ ambiguous, and reports are
# never compared.
@dataclasses.dataclass(frozen=True, eq=False)
class ReportData:
    """Everything the report shows; the pipeline fills it after selection."""

    run_name: str
    created: str
    model: str
    strategy_summary: str
    counts: dict[str, int]
    timings: dict[str, float]
    filenames: Sequence[str]
    points: npt.NDArray[Any]
    selected_rank: npt.NDArray[Any]
    thumbnails: Sequence[Thumbnail]
    corrupt: Sequence[tuple[str, str]]
    stop_reason: str
    min_distance_curve: Sequence[float]
    distributions: Sequence[Distribution] = ()
    duplicates: Sequence[DuplicateRow] = ()
    strategy_effects: Sequence[StrategyEffect] = ()
    #: (file, reason) for metadata or prediction files that could not be used.
    input_problems: Sequence[tuple[str, str]] = ()


@functools.cache
def _template() -> jinja2.Template:
    """Load the template once, via importlib.resources so it works from a wheel."""
    source = (
        importlib.resources.files("sift_worker.report")
        .joinpath("report.html.j2")
        .read_text(encoding="utf-8")
    )
    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.from_string(source)


def _shorten(name: str, limit: int) -> str:
    """Shorten in the middle so both the folder and the extension stay visible."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return f"{name[:head]}…{name[-tail:]}"


def _text_width(text: str, font_size: float) -> float:
    """Rough rendered width of sans-serif ``text``, enough to keep labels in their column."""
    em = 0.0
    for ch in text:
        if ch in "ilj.,:;'|!1 ()[]ft":
            em += 0.32
        elif ch in "MWmw@%":
            em += 0.92
        elif ch.isupper() or ch.isdigit() or ch in "\u2026_\u2013\u2014":
            em += 0.68
        else:
            em += 0.62
    return em * font_size


def _fit(text: str, width: float, font_size: float) -> str:
    """Shorten ``text`` in the middle until it fits in ``width`` user units."""
    limit = len(text)
    short = text
    while limit > 3 and _text_width(short, font_size) > width:
        limit -= 1
        short = _shorten(text, limit)
    return short


def _fmt_created(created: str) -> str:
    """Readable timestamp; the raw ISO string stays in the ``<time>`` element."""
    try:
        when = datetime.datetime.fromisoformat(created)
    except ValueError:
        return created
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    if when.utcoffset() == datetime.timedelta(0):
        return f"{text} UTC"
    return f"{text} {when.strftime('%z')}".rstrip()


def _fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _fmt_seconds(seconds: float) -> str:
    """Human duration: sub-second precision for quick stages, minutes for slow ones."""
    if not math.isfinite(seconds):
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _fmt_num(value: float) -> str:
    """Compact number for axis ticks and tooltips."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _nice_ticks(vmax: float, count: int = 4) -> list[float]:
    """Round tick values from 0 up to at least ``vmax`` (1-2-5 steps)."""
    if not math.isfinite(vmax) or vmax <= 0:
        return [0.0, 1.0]
    raw = vmax / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(vmax / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def _mime(data: bytes) -> str:
    """Sniff the image type so a PNG or WebP passed by mistake still displays."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "image/jpeg"


def _data_uri(data: bytes) -> str:
    return f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _sample_unselected(unselected: npt.NDArray[np.intp], budget: int) -> npt.NDArray[np.intp]:
    """Deterministically keep ``budget`` unselected indices, in original order."""
    if budget >= unselected.size:
        return unselected
    if budget <= 0:
        return unselected[:0]
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(unselected.size, size=budget, replace=False))
    return unselected[keep]


def _map_context(data: ReportData, max_points: int) -> dict[str, Any]:
    """Scale points into the SVG box and split them into the drawn layers."""
    filenames = data.filenames
    n = len(filenames)
    points = np.asarray(data.points, dtype=np.float64)
    ranks = np.asarray(data.selected_rank, dtype=np.int64).reshape(-1)
    if n == 0 and points.size == 0:
        points = np.zeros((0, 2))
    if points.shape != (n, 2) or ranks.shape[0] != n:
        raise ValueError(
            f"points {points.shape} must be (N, 2) and selected_rank ({ranks.shape[0]}) must "
            f"have one entry per filename (N={n}), i.e. the same length"
        )
    points = np.nan_to_num(points, nan=0.0, posinf=0.0, neginf=0.0)

    selected = np.flatnonzero(ranks > 0)
    selected = selected[np.argsort(ranks[selected], kind="stable")]
    unselected = np.flatnonzero(ranks <= 0)
    shown_unselected = _sample_unselected(unselected, max(0, max_points - selected.size))

    # Equal scale on both axes: PCA distances are meaningful, don't stretch them.
    if n:
        lo, hi = points.min(axis=0), points.max(axis=0)
    else:
        lo, hi = np.zeros(2), np.zeros(2)
    span = np.maximum(hi - lo, 1e-12)
    scale = min((_MAP_W - 2 * _MAP_PAD) / span[0], (_MAP_H - 2 * _MAP_PAD) / span[1])
    centre = (lo + hi) / 2

    # SVG y grows downwards, so flip the second axis.
    sx = _MAP_W / 2 + (points[:, 0] - centre[0]) * scale
    sy = _MAP_H / 2 - (points[:, 1] - centre[1]) * scale

    background = [(f"{sx[i]:.1f}", f"{sy[i]:.1f}", filenames[i]) for i in shown_unselected.tolist()]
    # Draw the best ranks last so they sit on top of later picks.
    highlighted: list[dict[str, Any]] = [
        {"x": f"{sx[i]:.1f}", "y": f"{sy[i]:.1f}", "name": filenames[i], "rank": int(ranks[i])}
        for i in selected[::-1].tolist()
    ]
    labelled = [p for p in highlighted if p["rank"] <= _LABELLED_RANKS]
    # Shrink markers as they get numerous so dense maps stay legible.
    n_sel, n_bg = max(int(selected.size), 1), max(int(shown_unselected.size), 1)
    r_sel = min(5.5, max(2.6, 5.5 * math.sqrt(150 / n_sel)))
    r_bg = min(2.6, max(1.4, 2.6 * math.sqrt(2_000 / n_bg)))
    return {
        "width": _MAP_W,
        "height": _MAP_H,
        "background": background,
        "highlighted": highlighted,
        "labelled": labelled,
        "r_sel": f"{r_sel:.1f}",
        "r_bg": f"{r_bg:.1f}",
        "stroke_sel": "1.5" if r_sel >= 4 else "1",
        "n_total": n,
        "n_selected": int(selected.size),
        "n_unselected": int(unselected.size),
        "n_unselected_shown": int(shown_unselected.size),
        "downsampled": shown_unselected.size < unselected.size,
        "labelled_ranks": _LABELLED_RANKS,
    }


def _curve_context(curve: Sequence[float]) -> dict[str, Any]:
    """Lay out the coverage-radius line chart (rank on x, distance on y)."""
    values = [(rank, float(v)) for rank, v in enumerate(curve, start=1)]
    finite = [(r, v) for r, v in values if math.isfinite(v)]
    ctx: dict[str, Any] = {
        "width": _CH_W,
        "height": _CH_H,
        "n": len(values),
        "skipped": len(values) - len(finite),
        "polyline": None,
        "points": [],
    }
    if not finite:
        return ctx
    plot_w = _CH_W - _CH_LEFT - _CH_RIGHT
    plot_h = _CH_H - _CH_TOP - _CH_BOTTOM
    x_min, x_max = finite[0][0], max(finite[-1][0], finite[0][0] + 1)
    y_ticks = _nice_ticks(max(v for _, v in finite))
    y_min = min(0.0, min(v for _, v in finite))
    if y_min < 0:
        y_ticks = [y_min, *y_ticks]
    y_max = y_ticks[-1]

    def sx(rank: float) -> float:
        return _CH_LEFT + (rank - x_min) / (x_max - x_min) * plot_w

    def sy(value: float) -> float:
        return _CH_TOP + (1 - (value - y_min) / (y_max - y_min)) * plot_h

    stride = max(1, math.ceil(len(finite) / _MAX_CURVE_VERTICES))
    vertices = finite[::stride]
    if vertices[-1] != finite[-1]:
        vertices.append(finite[-1])
    # Ends of the range plus round numbers in between that don't crowd the ends.
    span = x_max - x_min
    inner = [
        int(t)
        for t in _nice_ticks(float(x_max), 3)
        if x_min + 0.15 * span < t < x_max - 0.15 * span and float(t).is_integer()
    ]
    x_ticks = sorted({x_min, *inner, finite[-1][0]})
    ctx.update(
        polyline=" ".join(f"{sx(r):.1f},{sy(v):.1f}" for r, v in vertices),
        # Individual markers (with tooltips) only while they are distinguishable.
        points=[
            {"x": f"{sx(r):.1f}", "y": f"{sy(v):.1f}", "rank": r, "value": _fmt_num(v)}
            for r, v in vertices
        ]
        if len(vertices) <= 80
        else [],
        y_ticks=[{"y": f"{sy(t):.1f}", "label": _fmt_num(t)} for t in y_ticks],
        x_ticks=[
            {"x": f"{sx(t):.1f}", "label": f"{t:,}", "anchor": "end" if t == x_max else "middle"}
            for t in x_ticks
        ],
        left=_CH_LEFT,
        right=_CH_W - _CH_RIGHT,
        top=_CH_TOP,
        bottom=_CH_H - _CH_BOTTOM,
        last_value=_fmt_num(finite[-1][1]),
        first_value=_fmt_num(finite[0][1]),
    )
    return ctx


def _counts_context(
    counts: Mapping[str, int], n_embedded: int, n_duplicates: int, n_problems: int
) -> list[dict[str, str]]:
    """Summary cards in funnel order, then any extra counters the pipeline adds.

    The duplicates card shows the pipeline's own counter when it passes one
    (``duplicates`` or ``duplicates_removed``), else the number of rows given.
    """
    cards = [
        {"label": key, "value": _fmt_int(counts.get(key)), "key": key} for key in _KNOWN_COUNTS
    ]
    dup_key = next((k for k in _DUPLICATES_KEYS if k in counts), None)
    if dup_key is not None or n_duplicates:
        value = counts[dup_key] if dup_key is not None else n_duplicates
        cards.insert(3, {"label": "duplicates", "value": _fmt_int(value), "key": "dups"})
    selected = counts.get("selected")
    pool = counts.get("decoded", n_embedded or None)
    if selected is not None and pool:
        pct = 100.0 * selected / pool
        pct_text = f"{pct:.1f}%" if pct >= 0.1 or pct == 0 else f"{pct:.2g}%"
    else:
        pct_text = "—"
    cards.append({"label": "% selected", "value": pct_text, "key": "pct"})
    if n_problems:
        cards.append({"label": "input problems", "value": _fmt_int(n_problems), "key": "problems"})
    cards.extend(
        {"label": key.replace("_", " "), "value": _fmt_int(value), "key": "extra"}
        for key, value in counts.items()
        if key not in _KNOWN_COUNTS and key not in _DUPLICATES_KEYS
    )
    return cards


def _fmt_share(share: float) -> str:
    """Short percentage for chart labels: whole percent, one decimal below 10%."""
    pct = 100.0 * share
    if pct == 0:
        return "0%"
    if abs(pct) < 0.1:
        return "<0.1%"
    if abs(pct) < 10:
        return f"{pct:.1f}%"
    return f"{pct:.0f}%"


def _finite(value: float) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def _distribution_context(index: int, dist: Distribution) -> dict[str, Any]:
    """Lay out one paired bar chart: share among candidates vs share of the selection."""
    n = len(dist.categories)
    target = list(dist.target) if dist.target is not None else None
    if len(dist.before) != n or len(dist.after) != n or (target is not None and len(target) != n):
        raise ValueError(
            f"distribution {dist.name!r}: categories ({n}), before ({len(dist.before)}), after "
            f"({len(dist.after)}) and target must have the same length"
        )
    before = [max(int(c), 0) for c in dist.before]
    after = [max(int(c), 0) for c in dist.after]
    n_before, n_after = sum(before), sum(after)
    shown = min(n, MAX_DISTRIBUTION_CATEGORIES)
    rows_data = []
    for i in range(n):
        b = before[i] / n_before if n_before else 0.0
        a = after[i] / n_after if n_after else 0.0
        t = _finite(target[i]) if target is not None else None
        rows_data.append((str(dist.categories[i]), before[i], b, after[i], a, t))
    table = [
        {
            "name": name,
            "count_before": f"{cb:,}",
            "count_after": f"{ca:,}",
            "before": _fmt_share(b),
            "after": _fmt_share(a),
            "target": None if t is None else _fmt_share(t),
        }
        for name, cb, b, ca, a, t in rows_data
    ]
    rows_data = rows_data[:shown]
    peak = max([0.0, *(max(b, a, t or 0.0) for _, _, b, _, a, t in rows_data)])
    ticks = _nice_ticks(min(peak, 1.0) * 100, 4)
    scale_max = ticks[-1] / 100

    def sx(share: float) -> float:
        return _DI_X0 + min(max(share, 0.0), scale_max) / scale_max * (_DI_X1 - _DI_X0)

    rows = []
    for i, (name, cb, b, ca, a, t) in enumerate(rows_data):
        y = _DI_TOP + i * _DI_ROW + 4
        y_after = y + _DI_BAR + _DI_GAP
        wb, wa = sx(b) - _DI_X0, sx(a) - _DI_X0
        # Keep tiny non-zero shares visible.
        wb, wa = (max(w, 1.5) if c else 0.0 for w, c in ((wb, cb), (wa, ca)))
        tip = (
            f"{name}: {100 * b:.1f}% of all candidates ({cb:,} of {n_before:,}), "
            f"{100 * a:.1f}% of the selection ({ca:,} of {n_after:,})"
        )
        if t is not None:
            tip += f", target {100 * t:.1f}%"
        rows.append(
            {
                "name": name,
                "label": _fit(name, _DI_LABEL_X - 4, _DI_FONT),
                "tip": tip,
                "y": f"{y:.1f}",
                "y_after": f"{y_after:.1f}",
                "y_mid": f"{y + _DI_BAR + _DI_GAP / 2:.1f}",
                "y_row": f"{y - 4:.1f}",
                "w_before": f"{wb:.1f}",
                "w_after": f"{wa:.1f}",
                "x_before_text": f"{_DI_X0 + wb + 4:.1f}",
                "x_after_text": f"{_DI_X0 + wa + 4:.1f}",
                "before": _fmt_share(b),
                "after": _fmt_share(a),
                "x_target": None if t is None else f"{sx(t):.1f}",
                "target_y1": f"{y - 3:.1f}",
                "target_y2": f"{y_after + _DI_BAR + 3:.1f}",
            }
        )
    height = _DI_TOP + shown * _DI_ROW + 4
    return {
        "id": f"dist-{index}",
        "name": dist.name,
        "rows": rows,
        "table": table,
        "row_height": _DI_ROW,
        "n_before": f"{n_before:,}",
        "n_after": f"{n_after:,}",
        "n_categories": n,
        "n_hidden": n - shown,
        "has_target": any(r["target"] is not None for r in table),
        "width": _DI_W,
        "height": f"{height:.0f}",
        "x0": _DI_X0,
        "label_x": _DI_LABEL_X,
        "ticks": [{"x": f"{sx(t / 100):.1f}", "label": f"{_fmt_num(t)}%"} for t in ticks],
        "tick_y": _DI_TOP - 8,
        "grid_y1": _DI_TOP - 3,
        "grid_y2": f"{height - 2:.0f}",
    }


def _strategies_context(effects: Sequence[StrategyEffect]) -> dict[str, Any]:
    """Rows for the strategy table; shares become inline bars."""
    rows = []
    for i, e in enumerate(effects):
        mean, share = _finite(e.mean_contribution), _finite(e.share)
        # A threshold only filters: it has no term in the objective.
        filter_only = e.excluded is not None and not mean and not share
        rows.append(
            {
                "label": e.label,
                "description": e.description,
                "mean": "—" if mean is None or filter_only else _fmt_num(mean),
                "share": None if share is None or filter_only else _fmt_share(share),
                "width": f"{100 * min(max(share or 0.0, 0.0), 1.0):.1f}",
                "filter_only": filter_only,
                "excluded": "—" if e.excluded is None else _fmt_int(e.excluded),
                "colour": _STAGE_COLOURS[i % len(_STAGE_COLOURS)],
            }
        )
    return {"rows": rows, "has_excluded": any(e.excluded is not None for e in effects)}


def _duplicates_context(duplicates: Sequence[DuplicateRow]) -> list[dict[str, str]]:
    rows = []
    for d in duplicates[:MAX_DUPLICATE_ROWS]:
        kind = d.kind.strip().lower()
        distance = _finite(d.distance)
        rows.append(
            {
                "name": d.filename,
                "original": d.original,
                "kind": d.kind,
                "kind_class": kind if kind in ("exact", "near") else "other",
                "distance": "—" if distance is None else _fmt_num(distance),
            }
        )
    return rows


def _timings_context(timings: Mapping[str, float]) -> dict[str, Any]:
    """Per-stage durations plus the share of the total for a stacked bar."""
    stages = [(k, float(v)) for k, v in timings.items() if math.isfinite(float(v))]
    total = sum(max(v, 0.0) for _, v in stages)
    rows = [
        {
            "name": name,
            "text": _fmt_seconds(v),
            "share": f"{100.0 * max(v, 0.0) / total:.2f}" if total > 0 else "0",
            "pct": f"{100.0 * max(v, 0.0) / total:.0f}%" if total > 0 else "",
            "colour": _STAGE_COLOURS[i % len(_STAGE_COLOURS)],
        }
        for i, (name, v) in enumerate(stages)
    ]
    return {"rows": rows, "total": _fmt_seconds(total) if stages else "—"}


def render_report(
    data: ReportData, *, max_points: int = 20_000, max_thumbnails: int = MAX_THUMBNAILS
) -> str:
    """Render ``data`` as a complete, self-contained HTML document.

    Unselected points beyond ``max_points`` (minus the selected ones, which are
    always drawn) are dropped by a seeded sample, and at most ``max_thumbnails``
    previews are embedded, so the file stays small enough to mail or archive.
    """
    if max_points < 0 or max_thumbnails < 0:
        raise ValueError("max_points and max_thumbnails must be >= 0")
    thumbs = sorted(data.thumbnails, key=lambda t: t.rank)
    problems = list(data.input_problems)
    embedded = thumbs[:max_thumbnails]
    n_selected = data.counts.get("selected", len(thumbs))
    context = {
        "run_name": data.run_name,
        "created": data.created,
        "created_text": _fmt_created(data.created),
        "model": data.model,
        "strategy": data.strategy_summary,
        "stop_reason": data.stop_reason,
        "cards": _counts_context(
            data.counts, len(data.filenames), len(data.duplicates), len(problems)
        ),
        "timings": _timings_context(data.timings),
        "map": _map_context(data, max_points),
        "curve": _curve_context(data.min_distance_curve),
        "thumbnails": [
            {
                "rank": t.rank,
                "name": t.filename,
                "folder": _shorten(t.filename.rpartition("/")[0], _SHORT_FOLDER),
                "base": _shorten(t.filename.rpartition("/")[2], _SHORT_NAME),
                "uri": _data_uri(t.jpeg) if t.jpeg else None,
            }
            for t in embedded
        ],
        "n_thumbnails_given": len(thumbs),
        "max_thumbnails": max_thumbnails,
        "thumbs_capped": len(thumbs) > max_thumbnails,
        "n_selected": n_selected,
        "corrupt": [{"name": f, "reason": r} for f, r in data.corrupt[:MAX_CORRUPT_ROWS]],
        "n_corrupt": len(data.corrupt),
        "max_corrupt_rows": MAX_CORRUPT_ROWS,
        "distributions": [_distribution_context(i, d) for i, d in enumerate(data.distributions)],
        "strategies": _strategies_context(data.strategy_effects),
        "duplicates": _duplicates_context(data.duplicates),
        "n_duplicates": len(data.duplicates),
        "problems": [{"name": f, "reason": r} for f, r in problems[:MAX_PROBLEM_ROWS]],
        "n_problems": len(problems),
    }
    return _template().render(**context)
