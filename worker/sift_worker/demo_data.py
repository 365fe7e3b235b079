"""Generate a small, synthetic image dataset for ``sift-worker demo`` and the end-to-end tests.

Nothing is downloaded: every image is drawn with numpy and Pillow from a seed. The
dataset is built to show what Sift does at a glance, so its structure is known:

* **clusters** of clearly different "scenes" (each its own colour family *and* its own
  kind of pattern, so even an untrained CNN separates them) with realistic variation
  inside a cluster (position, size, angle, colour jitter, noise), stored under
  ``scenes/<name>/``;
* **duplicates**: exact byte copies of some images under ``copies/``;
* **corrupt** files under ``broken/``: empty, truncated, not an image, and a tiny PNG
  whose header claims 100000x100000 px.

Formats are spread the way real folders are: mostly JPEG, plus PNG, WebP, BMP, TIFF and
GIF, some with EXIF orientation, some greyscale, palette, CMYK, RGBA and one 16-bit PNG.
Every good file decodes with :func:`sift_worker.imaging.decode_for_model`.

The same arguments always produce the same bytes. Generating into a non-empty folder
raises ``FileExistsError`` instead of mixing two datasets.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import pathlib
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

__all__ = ["CLUSTER_NAMES", "DemoDataset", "generate_demo_dataset"]

FloatImage = npt.NDArray[np.float32]  # (h, w, 3), values nominally 0..255
Painter = Callable[[np.random.Generator, int, int, np.ndarray, np.ndarray], FloatImage]


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """What :func:`generate_demo_dataset` wrote; all filenames are relative to ``root``."""

    root: pathlib.Path
    clusters: dict[str, list[str]]
    """Cluster name -> the good images in it."""
    duplicates: dict[str, str]
    """Exact byte copy -> the original it copies."""
    corrupt: dict[str, str]
    """Corrupt file -> a keyword its ``CorruptImage.reason`` contains."""


# --- colour families: (name, background, accent) -------------------------------------

_COLOURS: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int]], ...] = (
    ("red", (190, 45, 40), (250, 225, 200)),
    ("blue", (40, 70, 190), (140, 190, 250)),
    ("green", (45, 150, 60), (10, 70, 25)),
    ("yellow", (230, 205, 55), (90, 60, 15)),
    ("purple", (125, 50, 165), (215, 165, 240)),
    ("orange", (240, 135, 30), (110, 30, 15)),
    ("gray", (140, 140, 140), (50, 50, 50)),
    ("teal", (30, 150, 150), (175, 240, 225)),
)


# --- patterns -------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[FloatImage, FloatImage]:
    """Row and column coordinates, as broadcastable (h, 1) and (1, w) arrays."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    return yy, xx


def _mix(base: np.ndarray, accent: np.ndarray, amount: np.ndarray) -> FloatImage:
    """Per-pixel blend: 0 -> base colour, 1 -> accent colour (colours may be images)."""
    a = np.clip(amount, 0.0, 1.0, dtype=np.float32)[..., None]
    out: FloatImage = base + a * (accent - base)
    return out


def _rotated(rng: np.random.Generator, h: int, w: int, max_deg: float) -> tuple[FloatImage, ...]:
    """Coordinates rotated by a random angle about a random point (pattern placement)."""
    yy, xx = _grid(h, w)
    theta = np.deg2rad(rng.uniform(-max_deg, max_deg))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    return u.astype(np.float32), v.astype(np.float32)


def _circles(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    yy, xx = _grid(h, w)
    amount = np.zeros((h, w), np.float32)
    scale = min(h, w)
    for _ in range(int(rng.integers(3, 8))):
        r = rng.uniform(0.05, 0.2) * scale
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        amount = np.maximum(amount, np.clip(r - dist, 0.0, 1.0) * rng.uniform(0.75, 1.0))
    return _mix(base, accent, amount)


def _stripes(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    u, _ = _rotated(rng, h, w, 25)
    period = rng.uniform(0.06, 0.13) * min(h, w)
    wave = np.sin(2 * np.pi * u / period)
    return _mix(base, accent, (wave * 3.0 + 0.5))  # steep: nearly hard-edged stripes


def _checkers(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    u, v = _rotated(rng, h, w, 15)
    cell = rng.uniform(0.07, 0.15) * min(h, w)
    parity = (np.floor(u / cell) + np.floor(v / cell)) % 2
    return _mix(base, accent, parity * rng.uniform(0.8, 1.0))


def _triangles(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    scale = min(h, w)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.08, 0.25) * scale
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.normal(0, 0.15, 3)
        points = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles]
        draw.polygon(points, fill=int(rng.integers(200, 256)))
    return _mix(base, accent, np.asarray(mask, np.float32) / 255.0)


def _clouds(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    cells = int(rng.integers(4, 9))
    coarse = rng.random((cells, cells * w // h + 1)).astype(np.float32)
    smooth = Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC)
    amount = (np.asarray(smooth, np.float32) - 0.3) * 1.6
    return _mix(base, accent, amount)


def _sunset(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    yy, xx = _grid(h, w)
    horizon = rng.uniform(0.55, 0.8) * h
    sky = _mix(base, accent, (yy / horizon) ** 2 * 0.6)
    sun_r = rng.uniform(0.08, 0.16) * min(h, w)
    sy, sx = rng.uniform(0.2, 0.6) * horizon, rng.uniform(0.15, 0.85) * w
    sun = np.clip(sun_r - np.sqrt((yy - sy) ** 2 + (xx - sx) ** 2), 0.0, 1.0)
    glow = np.minimum(base + 90.0, 255.0)
    img = _mix(sky, glow, sun)
    ground = np.clip(yy - horizon, 0.0, 1.0)
    return _mix(img, accent, ground)  # dark ground below a straight horizon


def _grid_lines(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    u, v = _rotated(rng, h, w, 10)
    spacing = rng.uniform(0.05, 0.12) * min(h, w)
    width = rng.uniform(1.0, 3.0)
    du = np.abs((u % spacing) - spacing / 2)
    dv = np.abs((v % spacing) - spacing / 2)
    line = np.maximum(
        np.clip(width / 2 - (spacing / 2 - du) + 0.5, 0, 1),
        np.clip(width / 2 - (spacing / 2 - dv) + 0.5, 0, 1),
    )
    return _mix(base, accent, line)


def _waves(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, accent: np.ndarray
) -> FloatImage:
    u, v = _rotated(rng, h, w, 20)
    k = 2 * np.pi / (rng.uniform(0.1, 0.2) * min(h, w))
    amp = rng.uniform(0.05, 0.12) * min(h, w)
    f = 2 * np.pi / (rng.uniform(0.3, 0.6) * max(h, w))
    band = np.sin(k * (v + amp * np.sin(f * u + rng.uniform(0, 2 * np.pi))))
    return _mix(base, accent, band * 0.5 + 0.5)


_PATTERNS: tuple[tuple[str, Painter], ...] = (
    ("circles", _circles),
    ("stripes", _stripes),
    ("checkers", _checkers),
    ("triangles", _triangles),
    ("clouds", _clouds),
    ("sunsets", _sunset),
    ("grids", _grid_lines),
    ("waves", _waves),
)

MAX_CLUSTERS = len(_COLOURS) * len(_PATTERNS)


def _scene(index: int) -> tuple[str, int, int]:
    """Cluster ``index`` -> (name, colour family, pattern).

    The first eight pair each colour with its own pattern, so clusters differ in both;
    beyond that the pairs are shifted, so every (colour, pattern) combination is unique.
    """
    pattern = index % len(_PATTERNS)
    colour = (index + index // len(_PATTERNS)) % len(_COLOURS)
    return f"{_COLOURS[colour][0]}-{_PATTERNS[pattern][0]}", colour, pattern


CLUSTER_NAMES: tuple[str, ...] = tuple(_scene(i)[0] for i in range(len(_PATTERNS)))
"""Names of the default clusters, in order."""


def _render(rng: np.random.Generator, index: int, size: tuple[int, int]) -> Image.Image:
    """One upright RGB picture of cluster ``index``, with jitter, shading and sensor noise."""
    w, h = size
    _, colour, pattern = _scene(index)
    _, base_rgb, accent_rgb = _COLOURS[colour]
    base = np.array(base_rgb, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    accent = np.array(accent_rgb, np.float32) + rng.normal(0, 8, 3).astype(np.float32)
    img = _PATTERNS[pattern][1](rng, h, w, base, accent)
    # soft light falloff from a random direction, global exposure, sensor noise
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)).astype(np.float32)
    img = img * (1.0 + 0.15 * ramp)[..., None] * np.float32(rng.uniform(0.9, 1.1))
    # uniform noise: looks like sensor grain and is ~6x cheaper to draw than Gaussian
    noise = rng.random(img.shape, dtype=np.float32) - np.float32(0.5)
    img += noise * np.float32(rng.uniform(6, 18))
    np.clip(img, 0, 255, out=img)
    return Image.fromarray(img.astype(np.uint8), "RGB")


# --- encodings ------------------------------------------------------------------------

_ORIENTATION_STORE = {  # orientation tag -> transpose that undoes what a viewer applies
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def _with_orientation(im: Image.Image, orientation: int) -> bytes:
    """A JPEG storing ``im`` rotated, with the EXIF tag that makes viewers turn it back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = im.transpose(_ORIENTATION_STORE[orientation])
    return _encode(stored, "JPEG", quality=88, exif=exif.tobytes())


def _rgba(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A cut-out: transparent rounded corners, as exported by design tools."""
    mask = Image.new("L", im.size, 0)
    radius = int(min(im.size) * rng.uniform(0.1, 0.25))
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, im.width - 1, im.height - 1), radius, fill=255)
    out = im.convert("RGBA")
    out.putalpha(mask)
    return out


def _palette(im: Image.Image, colours: int = 256) -> Image.Image:
    """Palette (mode P) version; fast octree, as the default median cut is slow on noise."""
    return im.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def _sixteen_bit(im: Image.Image) -> Image.Image:
    """The picture's luminance as a 16-bit greyscale (mode I;16), as scientific cameras write."""
    lum = np.asarray(im.convert("L"), np.float32) * 257.0
    return Image.fromarray(lum.astype(np.uint16))


def _encode_good(im: Image.Image, g: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """Encode image number ``g`` of the dataset; the format cycles so every run mixes them."""
    slot, cycle = g % 12, g // 12
    if g == 1:
        return _encode(_sixteen_bit(im), "PNG", compress_level=1), ".png"
    if slot == 1:
        return _encode(im, "PNG", compress_level=1), ".png"
    if slot == 2:
        return _with_orientation(im, 6), ".jpg"
    if slot == 3:
        return _encode(im, "WEBP", quality=85), ".webp"
    if slot == 5:
        kind = cycle % 3
        if kind == 0:
            return _encode(im, "BMP"), ".bmp"
        if kind == 1:
            return _encode(im, "TIFF", compression="tiff_deflate"), ".tif"
        return _encode(_palette(im), "GIF"), ".gif"
    if slot == 6 and cycle % 2 == 0:
        return _encode(im.convert("L"), "JPEG", quality=88), ".jpg"
    if slot == 7:
        return _encode(_rgba(im, rng), "PNG", compress_level=1), ".png"
    if slot == 8:
        return _with_orientation(im, 3 if cycle % 2 == 0 else 8), ".jpeg"
    if slot == 9:
        return _encode(im, "JPEG", quality=85, progressive=True), ".jpg"
    if slot == 11:
        if cycle % 2 == 0:
            return _encode(_palette(im, 64), "PNG", compress_level=1), ".png"
        return _encode(im.convert("CMYK"), "JPEG", quality=90), ".jpg"
    return _encode(im, "JPEG", quality=int(rng.integers(75, 95))), ".jpg"


# --- corrupt files --------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_claiming_huge_size(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few dozen bytes of well-formed PNG whose IHDR claims ``width`` x ``height``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _corrupt_file(
    kind: int, rng: np.random.Generator, size: tuple[int, int]
) -> tuple[str, bytes, str]:
    """(file stem + extension, bytes, expected reason keyword) for corrupt kind ``kind % 4``."""
    k = kind % 4
    if k == 0:
        return "empty.jpg", b"", "empty"
    if k == 1:
        whole = _encode(_render(rng, int(rng.integers(0, 8)), size), "JPEG", quality=90)
        return "truncated.jpg", whole[: len(whole) * 4 // 10], "truncated"
    if k == 2:
        # a text prefix keeps chance byte patterns from looking like some format's magic
        return "random.png", b"not an image: " + rng.bytes(2048), "identify"
    return "huge.png", _png_claiming_huge_size(), "too large"


# --- the generator --------------------------------------------------------------------


def generate_demo_dataset(
    root: pathlib.Path,
    *,
    clusters: int = 8,
    per_cluster: int = 40,
    duplicates: int = 6,
    corrupt: int = 4,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> DemoDataset:
    """Write a synthetic dataset under ``root`` (created; must be empty) and describe it.

    ``size`` is (width, height) of the upright pictures. ``corrupt`` files cycle
    through empty, truncated, random bytes and huge header, so 4 gives one of each.
    """
    if not 1 <= clusters <= MAX_CLUSTERS:
        raise ValueError(f"clusters must be between 1 and {MAX_CLUSTERS}, got {clusters}")
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
    if not 0 <= duplicates <= clusters * per_cluster:
        raise ValueError(
            f"duplicates must be between 0 and the {clusters * per_cluster} good images,"
            f" got {duplicates}"
        )
    if corrupt < 0:
        raise ValueError(f"corrupt must not be negative, got {corrupt}")
    if min(size) < 16:
        raise ValueError(f"size must be at least 16x16, got {size[0]}x{size[1]}")

    root = pathlib.Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            errno.EEXIST,
            "demo dataset folder exists and is not empty; choose a new or empty folder",
            str(root),
        )

    written: dict[str, bytes] = {}

    def write(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[rel] = data

    def make(c: int, j: int) -> tuple[bytes, str]:
        # seeded by (seed, cluster, index), not by generation order: threads may render
        rng = np.random.default_rng([seed, c, j])
        return _encode_good(_render(rng, c, size), c * per_cluster + j, rng)

    root.mkdir(parents=True, exist_ok=True)
    cluster_files: dict[str, list[str]] = {}
    jobs = [(c, j) for c in range(clusters) for j in range(per_cluster)]
    # numpy and Pillow's encoders release the GIL, so threads give a real speed-up
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for (c, j), (data, ext) in zip(jobs, pool.map(lambda job: make(*job), jobs), strict=True):
            name = _scene(c)[0]
            rel = f"scenes/{name}/img_{j + 1:04d}{ext}"
            write(rel, data)
            cluster_files.setdefault(name, []).append(rel)

    good = [rel for files in cluster_files.values() for rel in files]
    pick = np.random.default_rng([seed, 1_000_001]).choice(len(good), duplicates, replace=False)
    duplicate_files: dict[str, str] = {}
    for k, i in enumerate(sorted(int(i) for i in pick)):
        original = good[i]
        cluster, base = original.split("/")[1:]
        rel = f"copies/{cluster}-{base}" if k % 2 == 0 else f"copies/copy {k + 1} of {base}"
        write(rel, written[original])
        duplicate_files[rel] = original

    corrupt_files: dict[str, str] = {}
    for k in range(corrupt):
        filename, data, keyword = _corrupt_file(
            k, np.random.default_rng([seed, 2_000_003, k]), size
        )
        if k >= 4:
            stem, ext = filename.rsplit(".", 1)
            filename = f"{stem}_{k // 4 + 1}.{ext}"
        write(f"broken/{filename}", data)
        corrupt_files[f"broken/{filename}"] = keyword

    return DemoDataset(root, cluster_files, duplicate_files, corrupt_files)
