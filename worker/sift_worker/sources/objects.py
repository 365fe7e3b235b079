"""Detected objects as samples: a box in an image, cropped and padded to a square.

Boxes are ``(x, y, w, h)`` in pixels of the image as displayed, i.e. after its EXIF
orientation, the way annotation tools and detectors report them. A crop is:

* **clamped** to the image: the part of the box outside it is dropped (detectors
  routinely overshoot an edge by a pixel or two); a box with less than one pixel
  inside the image is reported as a :class:`~sift_worker.imaging.CorruptImage`, so one
  bad annotation does not stop a run;
* **padded, not cropped, to a square**: the longer side of the box is scaled to
  ``size`` and the rest filled with :data:`~sift_worker.imaging.ALPHA_BACKGROUND`. A
  centre crop would cut the ends off long objects (people, bottles, cars side-on),
  and stretching would distort them; the neutral grey is what transparent pixels
  become, so it reads as "nothing" to the model. Small objects are scaled up.

Decoding follows :func:`~sift_worker.imaging.decode_for_model` (same opening, checks,
colour handling and corruptness reasons, JPEG draft decoding just large enough for the
smallest box). The box is mapped into the stored pixel grid and only the crop is
turned upright, so a rotated phone photo is never transposed whole. An image with
several objects is decoded once for all of them; from object storage it is also
fetched once (into memory) for all of them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sift_worker.imaging import (
    _ORIENTATION_TRANSPOSE,
    DEFAULT_MAX_PIXELS,
    CorruptImage,
    _read_orientation,
    _with_image,
    _working_mode,
)
from sift_worker.sources.samples import (
    Producer,
    Root,
    SampleRef,
    check_box,
    fit,
    resample,
    to_jpeg,
    to_model_array,
)

__all__ = ["crop_thumbnail", "decode_crop", "object_refs"]

Box = tuple[float, float, float, float]

# Oriented point (x, y) -> stored point, for stored size (w, h); the inverses of the
# transposes in imaging._ORIENTATION_TRANSPOSE.
_TO_STORED: dict[int, Callable[[float, float, float, float], tuple[float, float]]] = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - x, y),
    3: lambda x, y, w, h: (w - x, h - y),
    4: lambda x, y, w, h: (x, h - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (y, h - x),
    7: lambda x, y, w, h: (w - y, h - x),
    8: lambda x, y, w, h: (w - y, x),
}
_QUARTER_TURNED = frozenset({5, 6, 7, 8})


def object_refs(
    file: str, objects: Sequence[Sequence[float]], *, min_size: float = 4.0
) -> list[SampleRef]:
    """One ref per object of ``file``, ids ``file#object=<index in objects>``.

    Boxes narrower or shorter than ``min_size`` pixels are skipped: a few pixels carry
    no content a model can embed, only upscaling blur. Indices are those of
    ``objects`` even when some are skipped, so ids do not depend on ``min_size``. A
    box that is not four finite numbers raises ValueError (a broken annotation file).
    """
    refs = []
    for index, raw in enumerate(objects):
        box = check_box(raw)
        if box[2] >= min_size and box[3] >= min_size:
            refs.append(SampleRef.object(file, index, box))
    return refs


def decode_crop(
    path: Path | bytes, box: Sequence[float], size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The object at ``box`` as a ``(3, size, size)`` uint8 array, padded to a square.

    Raises :class:`CorruptImage` like :func:`~sift_worker.imaging.decode_for_model`,
    and for a box that lies outside the image.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    item = _one(path, box, size, upscale=True, max_pixels=max_pixels)
    return to_model_array(item, size)


def crop_thumbnail(
    path: Path | bytes,
    box: Sequence[float],
    max_side: int = 192,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> bytes:
    """JPEG bytes of the clamped box scaled to fit ``max_side`` (never upscaled, no padding)."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    return to_jpeg(_one(path, box, max_side, upscale=False, max_pixels=max_pixels))


def crop_job(
    root: Root, refs: Sequence[SampleRef], size: int, max_pixels: int, p: Producer
) -> None:
    """Job for samples.iter_decoded_samples: the objects of one image, read and decoded once."""
    boxes = [check_box(ref.box) for ref in refs if ref.box is not None]
    assert len(boxes) == len(refs), "crop_job takes object refs only"
    order: Iterator[SampleRef] = iter(refs)

    def emit(item: Image.Image | CorruptImage) -> None:
        ref = next(order)
        p.put(ref, item if isinstance(item, CorruptImage) else to_model_array(item, size))

    source: Path | bytes
    if isinstance(root, Path):
        source = root / refs[0].file
    else:
        try:
            source = root.read_bytes(refs[0].file)
        except CorruptImage as exc:  # e.g. the object vanished: every box says so
            for _ in refs:
                p.acquire()
                emit(exc)
            return
    _cut(source, boxes, size, True, max_pixels, p.acquire, emit)


def _one(
    source: Path | bytes, box: Sequence[float], side: int, *, upscale: bool, max_pixels: int
) -> Image.Image:
    out: list[Image.Image | CorruptImage] = []
    if not isinstance(source, bytes):
        source = Path(source)
    _cut(source, [check_box(box)], side, upscale, max_pixels, lambda: None, out.append)
    if isinstance(out[0], CorruptImage):
        raise out[0]
    return out[0]


def _cut(
    path: Path | bytes,
    boxes: Sequence[Box],
    side: int,
    upscale: bool,
    max_pixels: int,
    acquire: Callable[[], None],
    emit: Callable[[Image.Image | CorruptImage], None],
) -> None:
    """Decode ``path`` (a file or its bytes) once and emit each box's crop (RGB, fit to
    ``side``), in order.

    ``acquire`` runs before each crop is made, so a caller can bound how many exist.
    Exactly one item per box: a box outside the image gets its own CorruptImage; a
    file that fails to decode gives every remaining box the file's CorruptImage.
    """
    header = _peek(path)
    done = 0

    def render(im: Image.Image, orientation: int, content: tuple[float, float]) -> None:
        nonlocal done
        im = _working_mode(im)
        stored = _stored_size(header, content)
        scale = content[0] / stored[0]  # decoded pixels per stored pixel (JPEG draft)
        for box in boxes:
            acquire()
            try:
                item: Image.Image | CorruptImage = _crop(
                    im, box, orientation, stored, scale, side, upscale
                )
            except CorruptImage as exc:
                item = exc
            except Exception as exc:  # a decoder may raise almost anything
                item = CorruptImage(f"undecodable image data: {type(exc).__name__}")
            emit(item)
            done += 1

    try:
        _with_image(path, _draft_size(header, boxes, side, upscale), max_pixels, render)
    except CorruptImage as exc:
        for _ in range(done, len(boxes)):
            acquire()
            emit(exc)


def _crop(
    im: Image.Image,
    box: Box,
    orientation: int,
    stored: tuple[float, float],
    scale: float,
    side: int,
    upscale: bool,
) -> Image.Image:
    ow, oh = _oriented(stored, orientation)
    x0, y0, x1, y1 = _clamp(box, ow, oh)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise CorruptImage(
            f"object box {_fmt(box)} lies outside the {round(ow)}x{round(oh)} px image"
        )
    target = fit(x1 - x0, y1 - y0, side, upscale=upscale)
    to_stored = _TO_STORED.get(orientation, _TO_STORED[1])
    ax, ay = to_stored(x0, y0, *stored)
    bx, by = to_stored(x1, y1, *stored)
    region = (min(ax, bx) * scale, min(ay, by) * scale, max(ax, bx) * scale, max(ay, by) * scale)
    if orientation in _QUARTER_TURNED:
        target = (target[1], target[0])
    return resample(im, region, target, _ORIENTATION_TRANSPOSE.get(orientation))


def _clamp(box: Box, w: float, h: float) -> Box:
    x, y, bw, bh = box
    return max(0.0, x), max(0.0, y), min(w, x + bw), min(h, y + bh)


def _oriented(size: tuple[float, float], orientation: int) -> tuple[float, float]:
    return (size[1], size[0]) if orientation in _QUARTER_TURNED else size


def _fmt(box: Box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"


def _stored_size(
    header: tuple[int, int, int] | None, content: tuple[float, float]
) -> tuple[float, float]:
    """The stored size boxes refer to: the header's when the decoded content is a draft
    of it (same shape, not larger), else the content's (the file changed under us)."""
    if header is None:
        return content
    w, h = header[0], header[1]
    same_shape = abs(content[0] * h - content[1] * w) <= 0.01 * w * h
    return (w, h) if same_shape and content[0] <= w and content[1] <= h else content


def _peek(path: Path | bytes) -> tuple[int, int, int] | None:
    """Stored size and orientation from the header alone; None leaves it to _with_image."""
    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            return im.size[0], im.size[1], _read_orientation(im)
    except Exception:
        return None


def _draft_size(
    header: tuple[int, int, int] | None, boxes: Sequence[Box], side: int, upscale: bool
) -> tuple[int, int]:
    """The smallest decoded image size at which every box still covers ``side`` pixels."""
    if header is None:
        return (1 << 30, 1 << 30)  # no reduction: _with_image reports what is wrong
    w, h, orientation = header
    ow, oh = _oriented((w, h), orientation)
    need = 0.0
    for box in boxes:
        x0, y0, x1, y1 = _clamp(box, ow, oh)
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            need = max(need, side / max(x1 - x0, y1 - y0))
    need = min(need, 1.0)
    return max(1, math.ceil(w * need)), max(1, math.ceil(h * need))
