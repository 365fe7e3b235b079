"""Image decoding for the embedding models and the report, with a corruptness check.

Every image in a dataset goes through :func:`decode_for_model` exactly once, from a
thread pool, so this module is written to be fast, thread-safe and total: for any input
it returns a well-formed array or raises :class:`CorruptImage` (whose ``reason`` ends up
in ``corrupt.csv``), never anything else.

Design choices, and why:

* **Header check first.** ``Image.open`` only parses the header, so the pixel count is
  compared with ``max_pixels`` before a single pixel is decoded; a 100 kB file claiming
  100000x100000 px is rejected without allocating 30 GB. Pillow's own global
  decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is neither relied on nor
  modified: when it fires first (it raises for more than twice its limit), its error is
  turned into the same ``CorruptImage("image too large: ...")``. Between its warning
  threshold (about 89.5 Mpx) and ``DEFAULT_MAX_PIXELS`` Pillow emits a
  ``DecompressionBombWarning`` and the image is accepted; if the application escalates
  warnings to errors, that becomes ``CorruptImage`` as well. A ``max_pixels`` above
  twice ``MAX_IMAGE_PIXELS`` cannot admit images Pillow itself refuses.
* **Full decode, no truncation tolerance.** ``load()`` is forced inside the check, and
  we rely on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (never set
  here: it is process-global); a half-downloaded file is reported, not silently padded
  with grey.
* **Decode small.** JPEGs are decoded with ``Image.draft`` at the smallest DCT scale
  (1/2, 1/4, 1/8) that still covers the target, which makes big photos several times
  faster; then one antialiased bicubic resample produces the exact size.
* **Shorter side to ``size``, then centre crop.** It keeps the aspect ratio (no
  stretched objects) and matches the ``Resize + CenterCrop`` evaluation transform the
  pretrained backbones were trained against. Resize and crop are a single
  ``resize(box=...)`` call.
* **Orientation.** The EXIF (or XMP) orientation is applied with the same transposes
  as ``ImageOps.exif_transpose``, but after resizing: a centred square crop commutes
  with every orientation, so transposing the small result is equivalent and cheaper.
* **Colour.** Every mode becomes 8-bit RGB. Alpha is composited over
  :data:`ALPHA_BACKGROUND`, a mid grey. 16-bit, 32-bit integer and float images are
  scaled to 8 bit by their actual min..max range (12-bit sensor data in a 16-bit
  container would otherwise be nearly black; clipping would turn it white). Embedded
  ICC profiles are ignored (pixels are treated as sRGB).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from collections.abc import Callable
from typing import IO, Any, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

__all__ = [
    "ALPHA_BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "CorruptImage",
    "decode_for_model",
    "make_thumbnail",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File extensions (lower case, with the dot) that the worker treats as images."""

DEFAULT_MAX_PIXELS: int = 100_000_000
"""Largest accepted width x height.

100 Mpx admits every common camera and scanner output (a 100 Mpx medium-format frame
is about 11600x8700) while bounding the worst case: a non-JPEG image at the limit
decodes to about 300 MB of RGB, so a pool of decoder threads stays within a few GB.
Anything larger in a training set is almost always a mistake or a decompression bomb.
"""

ALPHA_BACKGROUND: tuple[int, int, int] = (128, 128, 128)
"""Colour that transparent pixels are composited over.

A neutral mid grey: equally far from black and white and close to the ImageNet mean,
so a cut-out product looks to the model neither like a studio shot on white nor like a
night scene. Thumbnails use it too, so the report shows what the model saw.
"""

THUMBNAIL_QUALITY = 85
"""JPEG quality of thumbnails: visually clean at report size, a few kB each."""

_BOMB_MESSAGE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+) pixels")

# Orientation tag value -> transpose, the same table as ``ImageOps.exif_transpose``.
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_T = TypeVar("_T")


class CorruptImage(Exception):  # noqa: N818 - public name fixed by the pipeline API
    """The file is not a usable image; ``reason`` is a short, path-free explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_for_model(
    source: pathlib.Path | bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode an image to a ``(3, size, size)`` uint8 C-contiguous array.

    The shorter side is resized to ``size`` and the centre cropped to a square, after
    EXIF orientation; any colour mode becomes RGB. Raises :class:`CorruptImage` for
    empty, truncated, unidentifiable, oversized or unreadable input.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")

    def render(im: Image.Image, orientation: int, content: tuple[float, float]) -> np.ndarray:
        im = _working_mode(im)
        w, h = content
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        im = im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
        im = _to_rgb(_orient(im, orientation))
        return np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))

    return _with_image(source, (size, size), max_pixels, render)


def make_thumbnail(
    source: pathlib.Path | bytes, max_side: int = 192, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """Return JPEG bytes of the image scaled to fit ``max_side`` (aspect kept, never upscaled).

    Decoded exactly like :func:`decode_for_model` (orientation, colour, alpha), so the
    report shows what the model saw; metadata such as EXIF is not copied. Raises
    :class:`CorruptImage` like :func:`decode_for_model`.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")

    def render(im: Image.Image, orientation: int, content: tuple[float, float]) -> bytes:
        im = _working_mode(im)
        w, h = content
        scale = min(1.0, max_side / max(w, h))
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        if target != im.size:
            im = im.resize(target, Image.Resampling.BICUBIC, box=(0, 0, w, h), reducing_gap=3.0)
        im = _to_rgb(_orient(im, orientation))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
        return out.getvalue()

    return _with_image(source, (max_side, max_side), max_pixels, render)


def _with_image(
    source: pathlib.Path | bytes,
    draft_size: tuple[int, int],
    max_pixels: int,
    render: Callable[[Image.Image, int, tuple[float, float]], _T],
) -> _T:
    """Open, check and fully decode ``source``, then ``render`` it; all failures -> CorruptImage.

    ``draft_size`` is the size the decoded image must still cover (JPEG DCT scaling).
    ``render`` gets the loaded image, its EXIF orientation and the width and height of
    the part of it that holds the picture (DCT scaling can round up by a fraction).
    """
    path: pathlib.Path | None = None
    try:
        fh: IO[bytes]
        if isinstance(source, bytes | bytearray | memoryview):
            if len(source) == 0:
                raise CorruptImage("empty file")
            fh = io.BytesIO(source)
        else:
            path = pathlib.Path(source)
            try:
                fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below
            except OSError as exc:
                raise CorruptImage(f"unreadable: {_os_error_text(exc)}") from exc
        try:
            if path is not None and os.fstat(fh.fileno()).st_size == 0:
                raise CorruptImage("empty file")
            with Image.open(fh) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise CorruptImage(
                        f"image too large: {w}x{h} px exceeds limit of {max_pixels} px"
                    )
                if w < 1 or h < 1:
                    raise CorruptImage(f"invalid image size: {w}x{h} px")
                drafted = im.draft("RGB", draft_size)  # None except for JPEG
                content = (drafted[1][2], drafted[1][3]) if drafted else (float(w), float(h))
                im.load()
                return render(im, _read_orientation(im), content)
        finally:
            fh.close()
    except CorruptImage:
        raise
    except Exception as exc:  # a decoder may raise almost anything on hostile input
        raise CorruptImage(_reason_for(exc, max_pixels, path)) from exc


def _read_orientation(im: Image.Image) -> int:
    """EXIF/XMP orientation (1..8), 1 when absent or unparsable: bad metadata is not fatal."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if int(value) in _ORIENTATION_TRANSPOSE else 1
    except Exception:
        return 1


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return im if method is None else im.transpose(method)


def _working_mode(im: Image.Image) -> Image.Image:
    """Bring ``im`` into L, LA, RGB or RGBA, the modes that resize correctly.

    Alpha stays separate (resize premultiplies it) and is composited later, on the
    small image. Grey stays single-channel so resizing it is three times cheaper.
    """
    mode = im.mode
    has_transparency = im.info.get("transparency") is not None
    if mode in ("RGB", "L"):
        return im.convert("RGBA") if has_transparency else im
    if mode in ("RGBA", "LA"):
        return im
    if mode == "La":
        return im.convert("LA")
    if mode in ("P", "PA", "RGBa"):
        return im.convert("RGBA" if has_transparency or mode != "P" else "RGB")
    if mode == "1":
        return im.convert("L")
    if mode.startswith(("I", "F")):
        return _high_depth_to_l(im)
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8 bit by its real range."""
    try:
        arr = np.asarray(im)
    except Exception:  # exotic raw layouts numpy cannot view
        arr = np.asarray(im.convert("I"))
    # float32 is exact for 16-bit data and half the memory; wider types need float64
    data: npt.NDArray[np.floating[Any]] = arr.astype(
        np.float64 if arr.dtype.itemsize > 2 else np.float32
    )
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0)
    lo, hi = float(data.min()), float(data.max())
    # a constant image has no range to scale by: keep its value where it fits in 8 bit
    out = (data - lo) * (255.0 / (hi - lo)) + 0.5 if hi > lo else np.clip(data, 0.0, 255.0)
    return Image.fromarray(out.astype(np.uint8), "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Final step on the small image: composite alpha over the background, grey -> RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _reason_for(exc: Exception, max_pixels: int, path: pathlib.Path | None) -> str:
    """A short reason for corrupt.csv; never contains the file's path."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        match = _BOMB_MESSAGE.search(str(exc))
        if match is None:
            return "image too large (Pillow's decompression-bomb limit)"
        pixels, pillow_limit = int(match.group(1)), int(match.group(2))
        if pixels > max_pixels:
            return f"image too large: {pixels} px exceeds limit of {max_pixels} px"
        return (
            f"image too large: {pixels} px exceeds Pillow's decompression-bomb limit"
            f" of {pillow_limit} px"
        )
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image (cannot identify format)"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    text = _scrub(str(exc), path)
    if isinstance(exc, EOFError) or re.search(r"truncated|broken data stream", text, re.I):
        return "truncated image data"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"unreadable: {_os_error_text(exc)}"
    return f"undecodable image data: {text or type(exc).__name__}"[:200]


def _os_error_text(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _scrub(text: str, path: pathlib.Path | None) -> str:
    """Remove the file's path from a library message (the caller already knows the name)."""
    if path is not None:
        for p in sorted({os.fspath(path), os.path.abspath(path)}, key=len, reverse=True):
            text = text.replace(p, "<file>")
    return text
