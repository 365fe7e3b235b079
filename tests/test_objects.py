"""Object crops as samples, and the mixed, ordered, bounded sample stream."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image, ImageOps
from sift_worker import imaging
from sift_worker.imaging import ALPHA_BACKGROUND, CorruptImage
from sift_worker.sources import objects, samples, video
from sift_worker.sources.objects import crop_thumbnail, decode_crop, object_refs
from sift_worker.sources.samples import SampleRef, iter_decoded_samples

RED, BLUE, GREEN, WHITE = (220, 20, 20), (20, 20, 220), (20, 200, 20), (255, 255, 255)
GREY = np.array(ALPHA_BACKGROUND)

# (x, y, w, h) in the upright image, and the colour painted there
RED_BOX = (10.0, 10.0, 40.0, 30.0)
BLUE_BOX = (120.0, 50.0, 60.0, 40.0)
GREEN_BOX = (150.0, 0.0, 50.0, 20.0)  # touches the right edge


def scene(w: int = 200, h: int = 100) -> Image.Image:
    im = Image.new("RGB", (w, h), WHITE)
    for (x, y, bw, bh), c in ((RED_BOX, RED), (BLUE_BOX, BLUE), (GREEN_BOX, GREEN)):
        im.paste(c, (int(x), int(y), int(x + bw), int(y + bh)))
    return im


def save(im: Image.Image, path: Path, **params: Any) -> Path:
    im.save(path, **params)
    return path


def near(pixel: np.ndarray, rgb: tuple[int, int, int] | np.ndarray, tol: int = 12) -> bool:
    return bool(np.abs(pixel.astype(int) - np.asarray(rgb)).max() <= tol)


def test_crops_are_padded_to_a_square(tmp_path: Path) -> None:
    path = save(scene(), tmp_path / "s.png")
    arr = decode_crop(path, RED_BOX, 32)  # 40x30 -> 32x24, 4 rows of padding each side
    assert arr.shape == (3, 32, 32)
    assert arr.dtype == np.uint8
    assert near(arr[:, 16, 16], RED)
    assert near(arr[:, 5, 1], RED)
    assert near(arr[:, 1, 16], GREY, 0)
    assert near(arr[:, 30, 16], GREY, 0)
    arr = decode_crop(path, (120, 45, 60, 50), 60)  # blue, 5 px of white above; 5 rows pad
    assert near(arr[:, 2, 30], GREY, 0)
    assert near(arr[:, 57, 30], GREY, 0)
    assert near(arr[:, 5 + 2, 30], WHITE)
    assert near(arr[:, 5 + 8, 30], BLUE)
    assert near(arr[:, 30, 1], BLUE)
    assert near(arr[:, 30, 58], BLUE)


def test_boxes_are_clamped_to_the_image(tmp_path: Path) -> None:
    path = save(scene(), tmp_path / "s.png")
    np.testing.assert_array_equal(
        decode_crop(path, (-20, -30, 70, 70), 32), decode_crop(path, (0, 0, 50, 40), 32)
    )
    np.testing.assert_array_equal(
        decode_crop(path, (150, -5, 80, 25), 32), decode_crop(path, GREEN_BOX, 32)
    )
    for outside in [(200, 0, 30, 30), (-40, 10, 40, 10), (10, 99.5, 20, 20)]:
        with pytest.raises(CorruptImage, match="lies outside the 200x100 px image"):
            decode_crop(path, outside, 32)


def test_object_refs_skip_tiny_boxes_and_keep_indices() -> None:
    boxes = [RED_BOX, (5, 5, 3, 40), (1, 1, 40, 3.9), BLUE_BOX, (0, 0, 4, 4), (9, 9, -5, 10)]
    refs = object_refs("dir/s.jpg", boxes)
    assert [r.id for r in refs] == [
        "dir/s.jpg#object=0",
        "dir/s.jpg#object=3",
        "dir/s.jpg#object=4",
    ]
    assert refs[1] == SampleRef("dir/s.jpg#object=3", "dir/s.jpg", box=BLUE_BOX)
    assert len(object_refs("s.jpg", boxes, min_size=1)) == 5
    with pytest.raises(ValueError, match="non-finite"):
        object_refs("s.jpg", [(0, 0, float("nan"), 5)])
    with pytest.raises(ValueError, match=r"\(x, y, w, h\)"):
        object_refs("s.jpg", [(0, 0, 5)])


# stored = upright.transpose(_STORE[o]); EXIF orientation o turns it upright again
_STORE = {
    o: {
        Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,
        Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90,
    }.get(t, t)
    for o, t in imaging._ORIENTATION_TRANSPOSE.items()
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_are_in_the_exif_oriented_frame(tmp_path: Path, orientation: int) -> None:
    upright = scene()
    stored = upright.transpose(_STORE[orientation]) if orientation > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(stored, tmp_path / "o.png", exif=exif)
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(path))), upright)
    reference = save(upright, tmp_path / "u.png")
    for box in (RED_BOX, BLUE_BOX, (-10, 40, 100, 100), (33.3, 12.7, 101.1, 55.5)):
        got, want = decode_crop(path, box, 40), decode_crop(reference, box, 40)
        # same pixels; resampling a transposed image rounds in the other order
        assert np.abs(got.astype(int) - want).max() <= 2, box
        got_t = Image.open(io.BytesIO(crop_thumbnail(path, box, 64)))
        want_t = Image.open(io.BytesIO(crop_thumbnail(reference, box, 64)))
        assert got_t.size == want_t.size


def test_big_jpeg_is_draft_decoded_without_moving_the_boxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = scene().resize((2000, 1000), Image.Resampling.NEAREST)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(
        big.transpose(Image.Transpose.ROTATE_90), tmp_path / "big.jpg", quality=95, exif=exif
    )
    drafts: list[tuple[int, int]] = []
    real = objects._with_image

    def spy(source: Any, draft: tuple[int, int], *args: Any) -> Any:
        drafts.append(draft)
        return real(source, draft, *args)

    monkeypatch.setattr(objects, "_with_image", spy)
    scaled = [tuple(v * 10 for v in b) for b in (RED_BOX, BLUE_BOX, GREEN_BOX)]
    for box, c in zip(scaled, (RED, BLUE, GREEN), strict=True):
        arr = decode_crop(path, box, 32)
        assert near(arr[:, 16, 16], c, 16), box
    assert drafts[0] == (80, 160)  # stored 1000x2000; 400 px of the box -> 32: 1/8 is enough
    thumb = Image.open(io.BytesIO(crop_thumbnail(path, scaled[1], 100)))
    assert thumb.size == (100, 67)
    assert near(np.asarray(thumb.getpixel((50, 33))), BLUE, 16)


def test_crop_thumbnail_is_not_upscaled_nor_padded(tmp_path: Path) -> None:
    path = save(scene(), tmp_path / "s.png")
    thumb = Image.open(io.BytesIO(crop_thumbnail(path, BLUE_BOX)))
    assert thumb.format == "JPEG"
    assert thumb.size == (60, 40)
    assert near(np.asarray(thumb.getpixel((30, 20))), BLUE)
    assert Image.open(io.BytesIO(crop_thumbnail(path, BLUE_BOX, 30))).size == (30, 20)


def test_broken_image_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "b.png"
    path.write_bytes(save(scene(), tmp_path / "s.png").read_bytes()[:300])
    with pytest.raises(CorruptImage, match="truncated"):
        decode_crop(path, RED_BOX, 32)
    with pytest.raises(CorruptImage, match="unreadable"):
        crop_thumbnail(tmp_path / "missing.png", RED_BOX)


# --- the mixed stream -----------------------------------------------------------------

W, H, N, STEP = 64, 48, 12, 16


def make_clip(path: Path, base: int) -> Path:
    """N frames; frame i is grey level base + STEP * i."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            arr = np.full((H, W, 3), base + STEP * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, list[str | SampleRef], list[str]]:
    """Images, object refs, two videos (all frames / chosen frames), a broken video."""
    Image.new("RGB", (40, 30), (200, 100, 0)).save(tmp_path / "a.png")
    save(scene(), tmp_path / "s.png")
    Image.new("RGB", (30, 40), (0, 100, 200)).save(tmp_path / "z.png")
    make_clip(tmp_path / "c1.mp4", 20)
    make_clip(tmp_path / "c2.avi", 40)
    (tmp_path / "bad.mkv").write_bytes(b"not a video" * 50)
    boxes = object_refs("s.png", [RED_BOX, BLUE_BOX, GREEN_BOX])
    frames = [SampleRef.video_frame("c2.avi", n) for n in (1, 5, 6)]
    items: list[str | SampleRef] = ["a.png", "c1.mp4", *boxes, *frames, "bad.mkv", "z.png"]
    ids = [
        "a.png",
        *(f"c1.mp4#frame={n:06d}" for n in range(N)),
        "s.png#object=0",
        "s.png#object=1",
        "s.png#object=2",
        "c2.avi#frame=000001",
        "c2.avi#frame=000005",
        "c2.avi#frame=000006",
        "bad.mkv",
        "z.png",
    ]
    return tmp_path, items, ids


def test_mixed_stream_order_and_content(
    dataset: tuple[Path, list[str | SampleRef], list[str]],
) -> None:
    root, items, ids = dataset
    got = list(iter_decoded_samples(root, items, 16, workers=3, window=5))
    assert [ref.id for ref, _ in got] == ids
    by_id = {ref.id: item for ref, item in got}
    assert near(by_id["a.png"][:, 8, 8], (200, 100, 0), 2)
    assert near(by_id["z.png"][:, 8, 8], (0, 100, 200), 2)
    for n in range(N):
        assert near(by_id[f"c1.mp4#frame={n:06d}"][:, 8, 8], (20 + STEP * n,) * 3, 6)
    for n in (1, 5, 6):
        assert near(by_id[f"c2.avi#frame={n:06d}"][:, 8, 8], (40 + STEP * n,) * 3, 6)
    for i, c in enumerate((RED, BLUE, GREEN)):
        assert near(by_id[f"s.png#object={i}"][:, 8, 8], c)
    assert isinstance(by_id["bad.mkv"], CorruptImage)
    # the refs given are the refs yielded
    assert got[N + 1][0] is items[2]


def test_mixed_stream_is_deterministic_and_options_apply(
    dataset: tuple[Path, list[str | SampleRef], list[str]],
) -> None:
    root, items, _ = dataset

    def run(**kw: Any) -> list[tuple[str, bytes]]:
        return [
            (ref.id, item.tobytes() if isinstance(item, np.ndarray) else item.reason)
            for ref, item in iter_decoded_samples(root, items, 16, **kw)
        ]

    assert run(workers=1, window=1) == run(workers=4, window=3) == run(workers=2, window=64)
    ids = [i for i, _ in run(workers=2, window=4, every_n=5, max_frames=2)]
    assert ids[1:3] == ["c1.mp4#frame=000000", "c1.mp4#frame=000005"]
    assert "c2.avi#frame=000006" in ids  # explicit frame refs are not thinned


def test_one_decode_per_image_for_all_its_objects(
    dataset: tuple[Path, list[str | SampleRef], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _, _ = dataset
    calls: list[str] = []
    real = objects._with_image

    def spy(source: Any, *args: Any) -> Any:
        calls.append(Path(source).name)
        return real(source, *args)

    monkeypatch.setattr(objects, "_with_image", spy)
    refs = object_refs("s.png", [RED_BOX, BLUE_BOX, (500, 0, 9, 9), GREEN_BOX])
    refs += object_refs("a.png", [(0, 0, 10, 10)]) + object_refs("s.png", [RED_BOX])
    got = list(iter_decoded_samples(root, refs, 16, workers=2, window=2))
    assert sorted(calls) == ["a.png", "s.png", "s.png"]  # not adjacent: decoded again
    assert [ref for ref, _ in got] == refs
    assert isinstance(got[2][1], CorruptImage)
    assert all(isinstance(item, np.ndarray) for i, (_, item) in enumerate(got) if i != 2)


def count_live(
    monkeypatch: pytest.MonkeyPatch, delay: Callable[[], float]
) -> tuple[Callable[[], None], Callable[[], int]]:
    """Count the samples made and not yet released by the consumer, as test_embed_stream does."""
    lock = threading.Lock()
    live = peak = 0

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal live, peak
            time.sleep(delay())
            out = fn(*args, **kwargs)
            with lock:
                live += 1
                peak = max(peak, live)
            return out

        return wrapper

    monkeypatch.setattr(samples, "decode_for_model", counted(samples.decode_for_model))
    monkeypatch.setattr(video, "_frame_array", counted(video._frame_array))
    monkeypatch.setattr(objects, "to_model_array", counted(objects.to_model_array))

    def done() -> None:
        nonlocal live
        with lock:
            live -= 1

    return done, lambda: peak


@pytest.mark.parametrize(("workers", "window"), [(1, 1), (3, 2), (4, 6), (2, 9)])
def test_window_bounds_live_samples(
    dataset: tuple[Path, list[str | SampleRef], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    window: int,
) -> None:
    root, items, ids = dataset
    rng = random.Random(window)
    done, peak = count_live(monkeypatch, lambda: rng.random() * 0.002)
    seen = []
    for ref, item in iter_decoded_samples(root, items * 3, 16, workers=workers, window=window):
        seen.append(ref.id)
        if isinstance(item, np.ndarray):
            time.sleep(rng.random() * 0.002)  # a consumer sometimes slower than decoding
            done()
    assert seen == ids * 3
    assert peak() <= window
    if window > 2:
        assert peak() > 1, "nothing was decoded ahead"


def test_long_video_is_a_bounded_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_clip(tmp_path / "c.mp4", 0)
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    done, peak = count_live(monkeypatch, lambda: 0.0)
    stream = iter_decoded_samples(
        tmp_path, ["c.mp4", "c.mp4", "i.png", "c.mp4"], 16, workers=3, window=4
    )
    for _ in stream:
        time.sleep(0.005)  # slow consumer: the decoders wait for slots
        done()
    assert peak() == 4


def test_closing_early_stops_the_workers(
    dataset: tuple[Path, list[str | SampleRef], list[str]],
) -> None:
    root, items, _ = dataset
    before = threading.active_count()
    stream = iter_decoded_samples(root, items * 20, 16, workers=3, window=4)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()  # type: ignore[attr-defined]
    assert threading.active_count() == before


def test_invalid_ref_raises_at_its_position(
    dataset: tuple[Path, list[str | SampleRef], list[str]],
) -> None:
    root, _, _ = dataset
    bad = SampleRef("c1.mp4#frame=1#object=0", "c1.mp4", frame=1, box=(0, 0, 5, 5))
    stream = iter_decoded_samples(root, ["a.png", "z.png", bad, "a.png"], 16, workers=2, window=4)
    assert [ref.id for ref, _ in (next(stream), next(stream))] == ["a.png", "z.png"]
    with pytest.raises(ValueError, match="objects in video frames are not supported"):
        next(stream)


def test_stream_argument_checks(tmp_path: Path) -> None:
    for kw, match in (({"window": 0}, "window"), ({"every_n": 0}, "every_n")):
        with pytest.raises(ValueError, match=match):
            iter_decoded_samples(tmp_path, [], 16, **{"workers": 1, "window": 2, **kw})
    assert list(iter_decoded_samples(tmp_path, [], 16, workers=1, window=2)) == []
