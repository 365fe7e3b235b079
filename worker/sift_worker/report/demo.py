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

from sift_worker.report.projection import project_2d
from sift_worker.report.render import ReportData, Thumbnail, render_report

_PALETTE = [
    (76, 110, 245),
    (18, 184, 134),
    (250, 176, 5),
    (240, 62, 62),
    (132, 94, 247),
    (34, 139, 230),
]


def _k_center(x: npt.NDArray[np.float64], k: int) -> tuple[list[int], list[float]]:
    """Greedy k-center, as the real selection does, to get a realistic curve."""
    picks = [0]
    dist = np.linalg.norm(x - x[0], axis=1)
    curve = [float("inf")]
    while len(picks) < k:
        i = int(np.argmax(dist))
        curve.append(float(dist[i]))
        picks.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return picks, curve


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
    """Gaussian clusters in ``dim``-D, k-center selection, synthetic thumbnails."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, size=n)
    centres = rng.normal(0, 4, size=(clusters, dim))
    emb = (centres[labels] + rng.normal(0, 2.2, size=(n, dim))).astype(np.float32)
    folders = ["beach", "forest", "city-night", "snow", "market", "harbour"]
    names = [f"{folders[c % len(folders)]}/IMG_{4000 + i:05d}.jpg" for i, c in enumerate(labels)]
    names[7] = "field-survey/2024 Q3 <site B> & north/IMG_20240611_083412_camera-two.jpg"

    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    picks, curve = _k_center(unit.astype(np.float64), k)
    if 7 not in picks:
        picks[-1] = 7  # make sure the awkward filename shows up in the grid
    ranks = np.zeros(n, dtype=np.int64)
    for r, i in enumerate(picks, start=1):
        ranks[i] = r
    thumbs = [
        Thumbnail(filename=names[i], rank=r, jpeg=_thumbnail(int(labels[i]), rng))
        for r, i in enumerate(picks, start=1)
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
        strategy_summary=f"diversity (k-center greedy), nSamples={k}",
        counts={"listed": n + len(corrupt), "decoded": n, "corrupt": len(corrupt), "selected": k},
        timings={"list": 0.41, "embed": 12.83, "select": 0.09, "write": 0.62},
        filenames=names,
        points=project_2d(emb),
        selected_rank=ranks,
        thumbnails=thumbs,
        corrupt=corrupt,
        stop_reason=f"reached nSamples={k}",
        min_distance_curve=curve,
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
