"""Samples: whole images, video frames and object crops, decoded as one ordered stream.

A sample used to be an image file. It is now a :class:`SampleRef`: a file plus,
optionally, a frame number (a video frame) or a box (an object in an image), with a
stable human-readable ``id`` that ends up in every artifact. :func:`iter_decoded_samples`
turns a mixed sequence of refs into model inputs, in input order, with at most
``window`` decoded samples alive whatever the videos' lengths.

The scheduling, and why:

* **Jobs.** The input is cut into jobs: one per image file, one per video (all its
  frames, decoded sequentially: inter frames need their predecessors), one per run of
  consecutive frame refs of a video with increasing frame numbers (one sequential pass),
  one per run of consecutive object refs of an image (the image is decoded once and
  every box cut from it). Jobs run on a thread pool (Pillow and FFmpeg release the GIL),
  so several files, videos included, decode in parallel; each job emits its samples in
  order and the stream yields jobs in input order.
* **Slots.** A job takes a slot before it produces a sample and the slot comes back
  once the consumer has moved past that sample, so at most ``window`` samples exist at
  once. A job waits while the slots are out: a video becomes a bounded read-ahead.
* **No deadlock, no starvation.** Slots go to the earliest waiting job first, and the
  jobs after the one being consumed (the head) may hold at most ``window - 1`` slots
  together, so the head can always get one: the stream progresses for any window >= 1.
  Later jobs use the slack: they read ahead while the consumer is busy.
"""

from __future__ import annotations

import heapq
import io
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import SimpleQueue
from typing import Protocol, TypeAlias

import numpy as np
from PIL import Image

from sift_worker.imaging import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    THUMBNAIL_QUALITY,
    CorruptImage,
    _to_rgb,
    decode_for_model,
)

__all__ = ["Decoded", "ObjectReader", "Root", "SampleRef", "iter_decoded_samples"]


class ObjectReader(Protocol):
    """Samples that are not on disk (object storage through signed URLs).

    ``read_bytes`` returns the whole object (an image); ``temp_copy`` copies it to a
    private temporary file that the caller deletes (a video: FFmpeg reads files). Both
    raise ``CorruptImage`` for an object that cannot be a sample (it vanished, it is too
    large) and any other exception to fail the run.
    """

    max_copies: int
    """Temporary copies that jobs may hold at once (the job being consumed may always
    make one more, so the stream never waits on a later job's disk space)."""

    def read_bytes(self, name: str) -> bytes: ...

    def temp_copy(self, name: str) -> Path: ...

    def will_read(self, name: str) -> None:
        """A hint: ``read_bytes(name)`` follows soon, after the names hinted before it
        (the reader may fetch ahead). Hints are given only while a stream is open."""

    def end_reads(self) -> None:
        """The stream ended: hinted names that were not read will not be."""


Root: TypeAlias = Path | ObjectReader
"""Where a sample's file is: under a folder, or in object storage."""


Decoded: TypeAlias = np.ndarray | CorruptImage

MAX_GROUP = 65536
"""Most refs in one job. A job holds its refs (pointers to the caller's refs) until it is
done; a longer run is split, and the next part decodes its file again."""


@dataclass(frozen=True)
class SampleRef:
    """One sample: a whole image, one video frame, or one object box in an image.

    ``id`` is what artifacts (embeddings.txt, selection.csv) name the sample by; it is
    built by the constructors below so that the same sample always gets the same id.
    ``box`` is ``(x, y, w, h)`` in pixels of the EXIF-oriented image, as annotated.
    """

    id: str
    file: str
    frame: int | None = None
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def image(cls, file: str) -> SampleRef:
        """The whole image (or, for a video file, all its frames): ``id`` is ``file``."""
        return cls(file, file)

    @classmethod
    def video_frame(cls, file: str, frame: int) -> SampleRef:
        """Frame ``frame`` (0-based, presentation order): ``clip.mp4#frame=000120``.

        Six digits keep the ids of a clip in frame order when sorted as text.
        """
        return cls(f"{file}#frame={frame:06d}", file, frame=frame)

    @classmethod
    def object(cls, file: str, index: int, box: tuple[float, float, float, float]) -> SampleRef:
        """Object ``index`` of the annotation list of ``file``: ``img.jpg#object=3``."""
        return cls(f"{file}#object={index}", file, box=box)


# --- rendering shared by video frames and object crops -------------------------------
# The conventions are decode_for_model's: antialiased bicubic resize of a source box in
# one call, orientation applied to the small result, alpha over ALPHA_BACKGROUND.


def fit(w: float, h: float, side: int, *, upscale: bool) -> tuple[int, int]:
    """Integer size with the aspect of ``w x h`` whose longer side is ``side``."""
    scale = side / max(w, h)
    if not upscale:
        scale = min(1.0, scale)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resample(
    im: Image.Image,
    region: tuple[float, float, float, float],
    target: tuple[int, int],
    transpose: Image.Transpose | None = None,
) -> Image.Image:
    """Resize ``region`` (left, top, right, bottom) of ``im`` to ``target``, then transpose.

    ``im`` must be in one of imaging's working modes; the result is RGB with alpha
    composited. ``target`` is before the transpose (swapped sides for quarter turns).
    """
    out = im.resize(target, Image.Resampling.BICUBIC, box=region, reducing_gap=3.0)
    if transpose is not None:
        out = out.transpose(transpose)
    return _to_rgb(out)


def to_model_array(im: Image.Image, size: int) -> np.ndarray:
    """RGB image at most ``size`` square -> (3, size, size) uint8, padded centred in grey."""
    if im.size != (size, size):
        canvas = Image.new("RGB", (size, size), ALPHA_BACKGROUND)
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        im = canvas
    return np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))


def to_jpeg(im: Image.Image) -> bytes:
    """Thumbnail bytes, encoded exactly like imaging.make_thumbnail's."""
    out = io.BytesIO()
    im.save(out, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return out.getvalue()


def check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box as four finite floats; ValueError otherwise (a broken annotation is a bug)."""
    if len(box) != 4:
        raise ValueError(f"a box is (x, y, w, h), got {box!r}")
    out = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"box has a non-finite coordinate: {box!r}")
    return out


# --- the ordered, bounded stream -----------------------------------------------------


@dataclass
class _Failure:
    exc: BaseException


_Msg: TypeAlias = "tuple[SampleRef, Decoded] | _Failure | None"  # None: the job is done


class _Cancelled(BaseException):
    """Unwinds a job once the consumer has gone (BaseException: decoders catch Exception)."""


class _Slots:
    """At most ``window`` samples exist; the earliest waiting job is served first, and the
    jobs behind the head hold at most ``window - 1`` so the head can always get one."""

    def __init__(self, window: int, copies: int = 0) -> None:
        self._cond = threading.Condition()
        self._copies_free = copies
        self._free = window
        self._behind_cap = window - 1
        self._behind = 0  # slots held by jobs after the head
        self._held: dict[int, int] = {}
        self._head = 0
        self._waiting: list[int] = []  # heap of job indices
        self._cancelled = False

    def acquire(self, job: int) -> None:
        with self._cond:
            heapq.heappush(self._waiting, job)
            try:
                while not self._cancelled and not self._may_take(job):
                    self._cond.wait()
                if self._cancelled:
                    raise _Cancelled
            finally:
                self._waiting.remove(job)
                heapq.heapify(self._waiting)
                self._cond.notify_all()  # the next waiting job may be served now
            self._free -= 1
            self._held[job] = self._held.get(job, 0) + 1
            if job != self._head:
                self._behind += 1

    def _may_take(self, job: int) -> bool:
        if self._free <= 0 or self._waiting[0] != job:
            return False
        return job == self._head or self._behind < self._behind_cap

    def release(self, job: int) -> None:
        with self._cond:
            self._free += 1
            self._held[job] -= 1
            if job != self._head:
                self._behind -= 1
            self._cond.notify_all()

    def acquire_copy(self, job: int) -> None:
        """A temporary copy's turn: one of ``copies``, or any time for the head job.

        A job asks before it holds any slot and the head never waits, so this cannot
        deadlock with the slots (jobs run in order: the head is always running)."""
        with self._cond:
            while not self._cancelled and self._copies_free <= 0 and job != self._head:
                self._cond.wait()
            if self._cancelled:
                raise _Cancelled
            self._copies_free -= 1

    def release_copy(self) -> None:
        with self._cond:
            self._copies_free += 1
            self._cond.notify_all()

    def set_head(self, job: int) -> None:
        with self._cond:
            self._held.pop(self._head, None)
            self._behind -= self._held.get(job, 0)
            self._head = job
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()


class Producer:
    """What a job sees: take a slot before producing a sample, then hand the sample over."""

    def __init__(self, job: int, slots: _Slots, out: SimpleQueue[_Msg]) -> None:
        self._job = job
        self._slots = slots
        self._out = out

    def acquire(self) -> None:
        self._slots.acquire(self._job)

    def unused(self) -> None:
        """Give back a slot taken for a sample that did not come (the video ended)."""
        self._slots.release(self._job)

    def put(self, ref: SampleRef, item: Decoded) -> None:
        self._out.put((ref, item))

    def acquire_copy(self) -> None:
        """Wait for room for a temporary copy (object storage); give it back with
        :meth:`release_copy` once the copy is deleted."""
        self._slots.acquire_copy(self._job)

    def release_copy(self) -> None:
        self._slots.release_copy()


Work = Callable[[Producer], None]
"""A job: produces its samples in order through the Producer, one slot per sample."""


def check_sampling(size: int, every_n: int, max_frames: int | None) -> None:
    """Refuse bad sampling arguments eagerly, before a lazy stream hides the mistake."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if every_n < 1:
        raise ValueError(f"every_n must be positive, got {every_n}")
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must not be negative, got {max_frames}")


def iter_decoded_samples(
    root: Root,
    refs_or_files: Iterable[str | SampleRef],
    size: int,
    *,
    workers: int,
    window: int,
    every_n: int = 1,
    max_frames: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[SampleRef, Decoded]]:
    """Yield ``(ref, (3, size, size) uint8 array or CorruptImage)`` in input order.

    Each item of ``refs_or_files`` is a path relative to ``root`` or a :class:`SampleRef`:

    * a file name (or a ref with neither frame nor box): an image file is one sample; a
      video file (:data:`~sift_worker.sources.video.VIDEO_EXTENSIONS`) is every
      ``every_n``-th frame, at most ``max_frames`` of them, as
      :func:`~sift_worker.sources.video.iter_video_frames` yields them (one file-level
      CorruptImage when it is broken);
    * a ref with ``frame``: that frame of the video, exactly one item per ref;
    * a ref with ``box``: that object, cropped and padded to a square, one item per ref
      (:func:`~sift_worker.sources.objects.decode_crop`).

    Refs are yielded as given. At most ``window`` decoded samples exist at once (counting
    the one the consumer holds until it asks for the next). A ref with both a frame and a
    box raises ValueError at its position: objects in video frames are not supported yet.
    """
    check_sampling(size, every_n, max_frames)
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    works = _plan(root, refs_or_files, size, every_n, max_frames, max_pixels)
    if isinstance(root, Path):
        return _stream(works, workers=max(1, workers), window=window)
    return _stream(
        works, workers=max(1, workers), window=window, copies=root.max_copies, end=root.end_reads
    )


def _stream(
    works: Iterator[Work],
    *,
    workers: int,
    window: int,
    copies: int = 0,
    end: Callable[[], None] | None = None,
) -> Iterator[tuple[SampleRef, Decoded]]:
    slots = _Slots(window, copies)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    jobs: deque[tuple[int, SimpleQueue[_Msg]]] = deque()
    next_index = 0

    def submit_more() -> None:
        # a job is cheap until it runs; `window` of them keep every worker busy
        nonlocal next_index
        while len(jobs) < window:
            work = next(works, None)
            if work is None:
                return
            out: SimpleQueue[_Msg] = SimpleQueue()
            jobs.append((next_index, out))
            pool.submit(_run, work, Producer(next_index, slots, out), out)
            next_index += 1

    try:
        submit_more()
        while jobs:
            index, out = jobs[0]
            msg = out.get()
            if msg is None:
                jobs.popleft()
                slots.set_head(index + 1)
                submit_more()
                continue
            if isinstance(msg, _Failure):
                raise msg.exc
            ref, item = msg
            yield ref, item
            del item
            slots.release(index)  # the consumer asked for the next one: it is done with it
    finally:
        slots.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if end is not None:
            end()


def _run(work: Work, producer: Producer, out: SimpleQueue[_Msg]) -> None:
    try:
        work(producer)
    except _Cancelled:
        pass
    except Exception as exc:  # a bug, not a bad file: re-raised to the consumer in order
        out.put(_Failure(exc))
    finally:
        out.put(None)


def _plan(
    root: Root,
    items: Iterable[str | SampleRef],
    size: int,
    every_n: int,
    max_frames: int | None,
    max_pixels: int,
) -> Iterator[Work]:
    """Cut the input into jobs: runs of object refs per image, of frame refs per video."""
    from sift_worker.sources import objects, video  # they import SampleRef from here

    group: list[SampleRef] = []
    # planned a window ahead of the decoders: an object store fetches them ahead
    hint: Callable[[str], None] = (lambda _: None) if isinstance(root, Path) else root.will_read

    def flush() -> Work:
        refs = tuple(group)
        group.clear()
        if refs[0].box is not None:
            hint(refs[0].file)
            return partial(objects.crop_job, root, refs, size, max_pixels)
        return partial(video.frames_job, root, refs, size, max_pixels)

    for item in items:
        ref = SampleRef.image(item) if isinstance(item, str) else item
        if group and not _continues(group, ref):
            yield flush()
        if ref.frame is not None and ref.box is not None:
            yield _invalid(ref)
        elif ref.frame is not None or ref.box is not None:
            group.append(ref)
        elif Path(ref.file).suffix.lower() in video.VIDEO_EXTENSIONS:
            yield partial(video.video_job, root, ref, size, every_n, max_frames, max_pixels)
        else:
            hint(ref.file)
            yield partial(_image_job, root, ref, size, max_pixels)
    if group:
        yield flush()


def _continues(group: list[SampleRef], ref: SampleRef) -> bool:
    last = group[-1]
    if (
        len(group) >= MAX_GROUP
        or ref.file != last.file
        or (ref.box is not None and ref.frame is not None)
    ):
        return False
    if last.box is not None:
        return ref.box is not None
    return ref.frame is not None and last.frame is not None and ref.frame > last.frame


def _invalid(ref: SampleRef) -> Work:
    def work(_: Producer) -> None:
        raise ValueError(f"{ref.id}: objects in video frames are not supported yet")

    return work


def _image_job(root: Root, ref: SampleRef, size: int, max_pixels: int, p: Producer) -> None:
    p.acquire()
    try:
        source = root / ref.file if isinstance(root, Path) else root.read_bytes(ref.file)
        item: Decoded = decode_for_model(source, size, max_pixels=max_pixels)
    except CorruptImage as exc:
        item = exc
    p.put(ref, item)
