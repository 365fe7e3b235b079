"""Video frames as samples: sequential decoding with PyAV, nothing written to disk.

Frame ``n`` is the ``n``-th frame the decoder outputs (0-based, presentation order).
Frames are decoded in order (inter-coded frames need their predecessors) and turned
into model inputs with :func:`~sift_worker.imaging.decode_for_model`'s conventions:
shorter side to ``size`` and centre crop in one antialiased bicubic resize, then the
orientation (the container's display rotation, the video counterpart of EXIF
orientation), 8-bit RGB. Non-square pixels are honoured: the crop is square as
displayed.

Broken input never raises: a file that cannot be opened, has no video stream, is
larger than ``max_pixels`` per frame, or fails to decode yields one
:class:`~sift_worker.imaging.CorruptImage` for the whole file after the frames that
did decode, and the iteration stops (a frame the decoder flags as corrupt counts as
a failure too). Files are opened with FFmpeg's ``file`` protocol and only the
MP4/MOV, Matroska/WebM and AVI demuxers, so a crafted file cannot make FFmpeg read a
playlist's URLs or other local files. A video in object storage is first copied to a
private temporary file (ranged GETs, size-capped: the data plane's ``temp_copy``),
decoded exactly like a file on a volume, and deleted right after.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import av
import av.error
import numpy as np
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from sift_worker.imaging import DEFAULT_MAX_PIXELS, CorruptImage, _scrub
from sift_worker.sources.samples import (
    Decoded,
    Producer,
    Root,
    SampleRef,
    check_sampling,
    fit,
    resample,
    to_jpeg,
    to_model_array,
)

__all__ = ["VIDEO_EXTENSIONS", "frame_thumbnail", "iter_video_frames"]

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm"})
"""File extensions (lower case, with the dot) that the worker treats as videos."""

_OPEN_OPTIONS = {"format_whitelist": "mov,matroska,avi", "protocol_whitelist": "file"}

_QUARTER_TURNS = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def iter_video_frames(
    path: Path,
    size: int,
    *,
    every_n: int = 1,
    max_frames: int | None = None,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[SampleRef, Decoded]]:
    """Yield ``(ref, (3, size, size) uint8 array)`` for frames 0, n, 2n, ... of a video.

    ``name`` is the file as refs name it (``SampleRef.file``, the id's prefix); by
    default ``path`` as given. At most ``max_frames`` frames are yielded and decoding
    stops there. A broken file ends the iteration with one ``(SampleRef.image(name),
    CorruptImage)`` item; memory does not grow with the video's length.
    """
    check_sampling(size, every_n, max_frames)
    file = Path(path).as_posix() if name is None else name
    return _samples(Path(path), SampleRef.image(file), size, every_n, max_frames, None, max_pixels)


def frame_thumbnail(
    path: Path, frame: int, max_side: int = 192, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """JPEG bytes of frame ``frame`` scaled to fit ``max_side`` (aspect kept, never upscaled).

    Rendered like :func:`~sift_worker.imaging.make_thumbnail` (display rotation and
    pixel aspect applied). It seeks to the key frame before the frame's timestamp,
    ``frame / average frame rate`` after the first frame, instead of decoding from the
    start; that is exact for constant-frame-rate video (the usual case), and when the
    timestamps do not lead to the frame it decodes from the start. Raises
    :class:`CorruptImage` for a broken file or a frame past the end.
    """
    if frame < 0:
        raise ValueError(f"frame must not be negative, got {frame}")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    found, sar = _find_frame(Path(path), frame, max_pixels)
    try:
        w, h = found.width, found.height
        target = fit(w * sar, h, max_side, upscale=False)
        return to_jpeg(_render(found, (0, 0, w, h), target))
    except Exception as exc:
        raise CorruptImage(f"unconvertible video frame {frame}: {exc}"[:200]) from exc


# --- jobs for samples.iter_decoded_samples --------------------------------------------


def video_job(
    root: Root,
    ref: SampleRef,
    size: int,
    every_n: int,
    max_frames: int | None,
    max_pixels: int,
    p: Producer,
) -> None:
    """All (every_n-th) frames of ``ref.file``; a failure is reported under ``ref``."""
    if max_frames == 0:
        return
    with _local_file(root, ref.file, [ref], p) as path:
        if path is not None:
            _drive(_samples(path, ref, size, every_n, max_frames, None, max_pixels), p)


def frames_job(
    root: Root, refs: Sequence[SampleRef], size: int, max_pixels: int, p: Producer
) -> None:
    """The frames of ``refs`` (one file, increasing frames) in one sequential pass."""
    file_ref = SampleRef.image(refs[0].file)
    with _local_file(root, refs[0].file, refs, p) as path:
        if path is not None:
            _drive(_samples(path, file_ref, size, 1, None, refs, max_pixels), p)


@contextmanager
def _local_file(
    root: Root, file: str, refs: Sequence[SampleRef], p: Producer
) -> Iterator[Path | None]:
    """The video as a file: on the volume, or a temporary copy from object storage that is
    deleted once decoded. A copy that cannot be made (vanished, too large) gives each of
    ``refs`` the CorruptImage and yields None."""
    if isinstance(root, Path):
        yield root / file
        return
    p.acquire_copy()  # bounded disk: at most max_copies videos (+ the head's) at once
    try:
        try:
            path = root.temp_copy(file)
        except CorruptImage as exc:
            for ref in refs:
                p.acquire()
                p.put(ref, exc)
            yield None
            return
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)
    finally:
        p.release_copy()


def _drive(items: Generator[tuple[SampleRef, Decoded]], p: Producer) -> None:
    # the slot is taken before the next frame is decoded, so a waiting video holds
    # its decoder state but no extra frame
    try:
        while True:
            p.acquire()
            item = next(items, None)
            if item is None:
                p.unused()
                return
            p.put(*item)
    finally:
        items.close()


# --- decoding ---------------------------------------------------------------------------


def _samples(
    path: Path,
    file_ref: SampleRef,
    size: int,
    every_n: int,
    max_frames: int | None,
    wanted: Sequence[SampleRef] | None,
    max_pixels: int,
) -> Generator[tuple[SampleRef, Decoded]]:
    """Frames as samples: every ``every_n``-th, or exactly the ``wanted`` refs.

    ``wanted`` refs have increasing frames; each gets exactly one item (a CorruptImage
    when the video breaks or ends first). Otherwise a failure is one item for
    ``file_ref``.
    """
    limit = len(wanted) if wanted is not None else max_frames
    if limit == 0:
        return
    emitted = 0
    seen = 0
    frames = _decode(path, max_pixels)
    try:
        for n, frame, sar in frames:
            seen = n + 1
            if wanted is None:
                if n % every_n:
                    continue
                ref = SampleRef.video_frame(file_ref.file, n)
            elif n == wanted[emitted].frame:
                ref = wanted[emitted]
            else:
                continue
            yield ref, _frame_array(frame, sar, size, n)
            emitted += 1
            if emitted == limit:
                return
        if wanted is None:
            return
        failure = CorruptImage(f"no frame {wanted[emitted].frame}: the video has {seen} frames")
    except CorruptImage as exc:
        failure = exc
    finally:
        frames.close()
    if wanted is None:
        yield file_ref, failure
    else:
        for ref in wanted[emitted:]:
            yield ref, failure


def _decode(path: Path, max_pixels: int) -> Generator[tuple[int, VideoFrame, float]]:
    """``(n, frame, pixel aspect)`` for every frame; any failure raises CorruptImage."""
    with _open(path) as container:
        stream = _video_stream(container, max_pixels)
        sar = _pixel_aspect(stream)
        frames = container.decode(stream)
        n = 0
        while True:
            try:
                frame = next(frames, None)
            except Exception as exc:
                raise CorruptImage(_reason(exc, path, n)) from exc
            if frame is None:
                break
            if frame.is_corrupt:
                raise CorruptImage(f"corrupt video data at frame {n}")
            _check_pixels(frame.width, frame.height, max_pixels)
            yield n, frame, sar
            n += 1
        if n == 0:
            raise CorruptImage("no video frames")


def _open(path: Path) -> InputContainer:
    try:
        if os.stat(path).st_size == 0:
            raise CorruptImage("empty file")
        # "file:" so that a name with a colon is not taken for a protocol
        return av.open(f"file:{os.path.abspath(path)}", "r", container_options=_OPEN_OPTIONS)
    except CorruptImage:
        raise
    except Exception as exc:
        raise CorruptImage(_reason(exc, path, None)) from exc


def _video_stream(container: InputContainer, max_pixels: int) -> VideoStream:
    """The first real video stream (cover art is stored as a one-frame video stream)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            ctx = stream.codec_context
            _check_pixels(ctx.width, ctx.height, max_pixels)
            # FFmpeg's default slice threading only: with frame threads a decode error is
            # dropped silently and a cut-off file would look whole; throughput comes
            # from decoding several videos at once instead
            return stream
    raise CorruptImage("no video stream")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise CorruptImage(f"video too large: {width}x{height} px exceeds limit of {max_pixels} px")


def _pixel_aspect(stream: VideoStream) -> float:
    """Width of a pixel over its height; odd or missing values count as square."""
    for value in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if value:
            sar = float(value)
            if math.isfinite(sar) and 0.1 <= sar <= 10:
                return sar
    return 1.0


def _find_frame(path: Path, index: int, max_pixels: int) -> tuple[VideoFrame, float]:
    """Frame ``index``: seek near its timestamp, else (or on any doubt) decode from 0."""
    with _open(path) as container:
        stream = _video_stream(container, max_pixels)
        sar = _pixel_aspect(stream)
        first = _next_frame(container.decode(stream), path, 0)
        if first is None:
            raise CorruptImage("no video frames")
        _check_pixels(first.width, first.height, max_pixels)
        if index == 0:
            return first, sar
        rate, tb, origin = stream.average_rate or stream.guessed_rate, stream.time_base, first.pts
        if rate and tb and origin is not None:
            per_frame = 1 / (rate * tb)  # frame duration in time-base units
            try:
                container.seek(math.floor(origin + (index - 0.5) * per_frame), stream=stream)
                for frame in container.decode(stream):
                    if frame.pts is None or frame.is_corrupt:
                        break
                    at = round((frame.pts - origin) / per_frame)
                    if at == index:
                        _check_pixels(frame.width, frame.height, max_pixels)
                        return frame, sar
                    if at > index:
                        break
            except Exception:  # whatever went wrong, the sequential pass below decides
                pass
    frames = _decode(path, max_pixels)
    try:
        count = 0
        for n, frame, sar in frames:
            count = n + 1
            if n == index:
                return frame, sar
    finally:
        frames.close()
    raise CorruptImage(f"no frame {index}: the video has {count} frames")


def _next_frame(frames: Iterator[VideoFrame], path: Path, n: int) -> VideoFrame | None:
    try:
        frame = next(frames, None)
    except Exception as exc:
        raise CorruptImage(_reason(exc, path, n)) from exc
    if frame is not None and frame.is_corrupt:
        raise CorruptImage(f"corrupt video data at frame {n}")
    return frame


# --- rendering ----------------------------------------------------------------------------


def _frame_array(frame: VideoFrame, sar: float, size: int, n: int) -> np.ndarray:
    """Shorter displayed side to ``size``, centre crop, display rotation -> (3, size, size)."""
    try:
        w, h = frame.width, frame.height
        side = min(w * sar, h)  # the displayed square, in display pixels
        cw, ch = side / sar, side  # ... and in stored pixels
        region = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        return to_model_array(_render(frame, region, (size, size)), size)
    except Exception as exc:  # e.g. a pixel format swscale cannot convert
        raise CorruptImage(f"unconvertible video frame {n}: {exc}"[:200]) from exc


def _render(
    frame: VideoFrame, region: tuple[float, float, float, float], target: tuple[int, int]
) -> Image.Image:
    """Resize ``region`` (stored pixels) of ``frame`` to ``target``, then the display rotation.

    Like JPEG draft decoding in imaging: when the region still covers ``target`` at
    1/2, 1/4 or 1/8 scale, swscale converts to RGB at the smallest such scale with an
    area (box) filter, and the exact bicubic resize starts from there. Converting a
    640x480 frame at half size halves the cost of a 224 px sample; for HD and 4K video
    the saving is several-fold.
    """
    w, h = frame.width, frame.height
    left, top, right, bottom = region
    k = next((k for k in (8, 4, 2) if _covers(right - left, bottom - top, k, target)), 1)
    rw, rh = max(1, round(w / k)), max(1, round(h / k))
    # the frame's own colour matrix and range (swscale otherwise assumes limited range)
    rgb = frame.to_ndarray(
        format="rgb24",
        width=rw,
        height=rh,
        interpolation="AREA",
        src_color_range=frame.color_range,
        threads=1,  # parallelism is across files
    )
    sx, sy = rw / w, rh / h
    im = Image.fromarray(rgb, "RGB")  # several times faster than frame.to_image()
    return resample(im, (left * sx, top * sy, right * sx, bottom * sy), target, _transpose(frame))


def _covers(w: float, h: float, k: int, target: tuple[int, int]) -> bool:
    return w / k >= target[0] and h / k >= target[1]


def _transpose(frame: VideoFrame) -> Image.Transpose | None:
    """The display rotation (counter-clockwise degrees) as a transpose, to 90-degree steps."""
    return _QUARTER_TURNS.get(round(frame.rotation / 90) % 4)


def _reason(exc: Exception, path: Path, frame: int | None) -> str:
    """A short reason for corrupt.csv, without the path; ``frame`` is where decoding stopped.

    FFmpeg reports a damaged or cut-off file as invalid data or as an I/O error, so
    only errors about the file itself (missing, no permission) read "unreadable".
    """
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    where = "" if frame is None else f" at frame {frame}"
    if isinstance(exc, EOFError):
        return f"truncated video data{where}"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError) or (
        isinstance(exc, OSError) and not isinstance(exc, av.error.FFmpegError) and exc.errno
    ):
        return f"unreadable: {exc.strerror or type(exc).__name__}"
    if frame is None:
        return "not a recognised video (unknown format or damaged container)"
    text = exc.strerror if isinstance(exc, av.error.FFmpegError) else str(exc)
    return f"undecodable video data{where}: {_scrub(text or type(exc).__name__, path)}"[:200]
