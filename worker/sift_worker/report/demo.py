"""Render a report from synthetic data: ``python -m sift_worker.report.demo OUT.html``.

Lets the report's look be checked (and screenshotted for the docs) without
running the model or having a data set at hand. Everything is seeded, so the
output is identical on every run.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from sift_worker.report.distributions import make_distribution
from sift_worker.report.projection import project_2d
from sift_worker.report.render import (
    DuplicateRow,
    ReportData,
    StrategyEffect,
    Thumbnail,
    render_report,
)

_PALETTE = [
    (76, 110, 245),
    (18, 184, 134),
    (250, 176, 5),
    (240, 62, 62),
    (132, 94, 247),
    (34, 139, 230),
]
_WEATHER = ["sunny", "cloudy", "rain", "snow", "fog"]
_BLUR_MAX = 0.6
_BALANCE_STRENGTH = 0.5


def _select(
    x: npt.NDArray[np.float64],
    k: int,
    weather: npt.NDArray[np.object_],
    allowed: npt.NDArray[np.bool_],
) -> tuple[list[int], list[float], dict[str, list[float]]]:
    """Greedy k-center plus a uniform weather balance term, over the allowed rows.

    A small stand-in for the real selection engine, so that the curve, the
    distributions and the strategy contributions in the demo hang together.
    """
    first = int(np.flatnonzero(allowed)[0])
    picks = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    curve = [float("inf")]
    terms: dict[str, list[float]] = {"diversity[0]": [0.0], "balance[1]": [0.0]}
    share = 1.0 / len(_WEATHER)
    scale = float(dist[allowed].max()) or 1.0
    while len(picks) < k:
        taken = [weather[i] for i in picks]
        # Reward categories still below their target share of the selection.
        gap = {w: max(0.0, share - taken.count(w) / len(picks)) for w in _WEATHER}
        bonus = np.array([gap.get(w, 0.0) for w in weather]) * _BALANCE_STRENGTH / share
        div = dist / scale
        score = np.where(allowed, div + bonus, -np.inf)
        score[picks] = -np.inf
        i = int(np.argmax(score))
        curve.append(float(dist[i]))
        terms["diversity[0]"].append(float(div[i]))
        terms["balance[1]"].append(float(bonus[i]))
        picks.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return picks, curve, terms


def _duplicates(names: list[str], rng: np.random.Generator) -> list[DuplicateRow]:
    """Twelve plausible duplicates: copies with a suffix, re-uploads, light edits."""
    rows = []
    for j, i in enumerate(rng.choice(len(names), size=12, replace=False).tolist()):
        original = names[i]
        folder, _, base = original.rpartition("/")
        stem, _, ext = base.rpartition(".")
        if j % 3 == 0:
            rows.append(DuplicateRow(f"{folder}/{stem} (1).{ext}", original, "exact", 0.0))
        elif j % 3 == 1:
            rows.append(DuplicateRow(f"uploads/2024-06/{base}", original, "exact", 0.0))
        else:
            distance = round(float(rng.uniform(0.008, 0.06)), 3)
            rows.append(DuplicateRow(f"{folder}/{stem}_edit.{ext}", original, "near", distance))
    return rows


def _thumbnail(cluster: int, rng: np.random.Generator, size: int = 128) -> bytes:
    """A coloured square with a shape: cheap stand-in for a real photo."""
    base = np.array(_PALETTE[cluster % len(_PALETTE)], dtype=float)
    bg = tuple(int(c) for c in np.clip(base * 0.35 + 160 + rng.normal(0, 12, 3), 0, 255))
    fg = tuple(int(c) for c in np.clip(base + rng.normal(0, 20, 3), 0, 255))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    r = rng.uniform(0.15, 0.3) * size
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = cluster % 3
    if shape == 0:
        draw.ellipse(box, fill=fg)
    elif shape == 1:
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fg)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def build_demo_data(
    n: int = 300, clusters: int = 6, dim: int = 64, k: int = 40, seed: int = 0
) -> ReportData:
    """Gaussian clusters in ``dim``-D, a diversity + balance + threshold selection,
    synthetic thumbnails, metadata, duplicates and input problems."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, size=n)
    centres = rng.normal(0, 4, size=(clusters, dim))
    emb = (centres[labels] + rng.normal(0, 2.2, size=(n, dim))).astype(np.float32)
    folders = ["beach", "forest", "city-night", "snow", "market", "harbour"]
    names = [f"{folders[c % len(folders)]}/IMG_{4000 + i:05d}.jpg" for i, c in enumerate(labels)]
    names[7] = "field-survey/2024 Q3 <site B> & north/IMG_20240611_083412_camera-two.jpg"

    # Per-sample inputs, loosely tied to the clusters like real metadata would be.
    weather_p = np.array([0.42, 0.26, 0.16, 0.09, 0.07])
    weather = np.array(
        [_WEATHER[j] for j in rng.choice(len(_WEATHER), size=n, p=weather_p)], dtype=object
    )
    weather[labels == 3] = "snow"
    weather[rng.random(n) < 0.05] = None
    blur = rng.beta(2.0, 3.5, size=n)
    blur[rng.random(n) < 0.03] = np.nan
    blur[7] = 0.2
    allowed = ~(blur > _BLUR_MAX)
    allowed[7] = True

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    picks, curve, terms = _select(unit.astype(np.float64), k, weather, allowed)
    if 7 not in picks:
        picks[-1] = 7  # make sure the awkward filename shows up in the grid
    ranks = np.zeros(n, dtype=np.int64)
    for r, i in enumerate(picks, start=1):
        ranks[i] = r
    thumbs = [
        Thumbnail(filename=names[i], rank=r, jpeg=_thumbnail(int(labels[i]), rng))
        for r, i in enumerate(picks, start=1)
    ]
    selected = np.array(picks)
    classes = np.array([folders[c % len(folders)] for c in labels], dtype=object)
    distributions = [
        make_distribution(
            "metadata: weather",
            weather,
            selected,
            target=dict.fromkeys(_WEATHER, 1 / len(_WEATHER)),
        ),
        make_distribution("scores: blur", blur, selected),
        make_distribution("class (predictions)", classes, selected),
    ]
    total = sum(sum(v) for v in terms.values()) or 1.0
    effects = [
        StrategyEffect(
            "diversity[0]",
            "diversity on embeddings, strength 1",
            float(np.mean(terms["diversity[0]"])),
            sum(terms["diversity[0]"]) / total,
        ),
        StrategyEffect(
            "balance[1]",
            f"balance on metadata: weather, uniform target, strength {_BALANCE_STRENGTH:g}",
            float(np.mean(terms["balance[1]"])),
            sum(terms["balance[1]"]) / total,
        ),
        StrategyEffect(
            "threshold[2]",
            f"threshold on scores: blur, keep values <= {_BLUR_MAX:g}",
            0.0,
            0.0,
            excluded=int((~allowed).sum()),
        ),
    ]
    duplicates = _duplicates(names, rng)
    problems = [
        (
            "metadata/weather-2024-06.jsonl",
            "line 418: invalid JSON (Expecting ',' delimiter: line 1 column 57)",
        ),
        (
            "predictions/classifier-v3/batch-07.json",
            "unknown class id 17; the predictions schema lists 6 classes",
        ),
    ]
    corrupt = [
        (
            "harbour/exports/2023-11-02_drone_pass_07_overexposed_retake_FINAL_v3_DO_NOT_USE.jpg",
            "cannot identify image file",
        ),
        (
            "snow/raw-uploads/camera-07/IMG_20231202_151515_partial_upload.jpg",
            "image file is truncated (37 bytes not processed)",
        ),
        (
            "market/panorama_stitched_full_resolution_street_level_0001.png",
            "decompression bomb: 289,000,000 pixels exceeds the 178,956,970 pixel limit",
        ),
    ]
    return ReportData(
        run_name="demo-diversity-run",
        created="2024-06-11T08:34:12+00:00",
        model="tiny (random init)",
        strategy_summary=(
            f"diversity + balance (weather) + threshold (blur <= {_BLUR_MAX:g}), nSamples={k}"
        ),
        counts={
            "listed": n + len(duplicates) + len(corrupt),
            "decoded": n + len(duplicates),
            "corrupt": len(corrupt),
            "selected": k,
        },
        timings={"list": 0.41, "embed": 12.83, "dedupe": 0.12, "select": 0.09, "write": 0.62},
        filenames=names,
        points=project_2d(emb),
        selected_rank=ranks,
        thumbnails=thumbs,
        corrupt=corrupt,
        stop_reason=f"reached nSamples={k}",
        min_distance_curve=curve,
        distributions=distributions,
        duplicates=duplicates,
        strategy_effects=effects,
        input_problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    """Write the demo report to the path given on the command line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sift_worker.report.demo OUT.html", file=sys.stderr)
        return 2
    html = render_report(build_demo_data())
    Path(args[0]).write_text(html, encoding="utf-8")
    print(f"wrote {args[0]} ({len(html.encode()):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
