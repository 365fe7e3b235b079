"""Video frames as samples: counts, ids, content, rotation, thumbnails, broken files."""

from __future__ import annotations

import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from sift_worker.imaging import CorruptImage, decode_for_model
from sift_worker.sources import samples, video
from sift_worker.sources.samples import SampleRef, iter_decoded_samples
from sift_worker.sources.video import VIDEO_EXTENSIONS, frame_thumbnail, iter_video_frames

W, H, FPS, N = 64, 48, 10, 20  # 2 s at 10 fps


def colour(i: int) -> tuple[int, int, int]:
    """Frame i's colour: 12 apart per frame, far beyond codec error, so frames are told apart."""
    return (i * 12) % 256, 255 - (i * 12) % 256, 60


def which_frame(rgb: np.ndarray) -> int:
    """The frame whose colour is nearest ``rgb``."""
    dist = [np.abs(np.asarray(colour(i)) - rgb.astype(int)).sum() for i in range(N)]
    return int(np.argmin(dist))


def make_video(
    path: Path,
    codec: str = "mpeg4",
    n: int = N,
    *,
    rotation: int | None = None,
    gop: int = 5,
    options: dict[str, str] | None = None,
    noise: bool = False,
) -> Path:
    """Frames of changing colour with a white top-left quarter (for orientation).

    ``noise`` fills the bottom rows with noise: every frame then takes real space in
    the file, so cutting the file cuts between frames.
    """
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"encoder {codec} not available")
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size = gop  # several key frames: seeking has somewhere to land
        if rotation is not None:
            stream.set_display_rotation(rotation)
        rng = np.random.default_rng(0)
        for i in range(n):
            arr = np.empty((H, W, 3), np.uint8)
            arr[:] = colour(i)
            arr[: H // 4, : W // 4] = 255
            if noise:
                arr[-8:] = rng.integers(0, 256, (8, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def centre(arr: np.ndarray) -> np.ndarray:
    return arr[:, arr.shape[1] // 2 + 2, arr.shape[2] // 2 + 2]


CONTAINERS = [
    ("mpeg4", "clip.mp4"),
    ("libx264", "clip.mkv"),
    ("mpeg4", "clip.avi"),
    ("libx264", "clip.mov"),
    ("libvpx-vp9", "clip.webm"),
]


@pytest.mark.parametrize(("codec", "name"), CONTAINERS)
def test_every_nth_frame_with_ids_and_content(tmp_path: Path, codec: str, name: str) -> None:
    path = make_video(tmp_path / name, codec)
    items = list(iter_video_frames(path, 32, every_n=3, name=f"videos/{name}"))
    assert [ref.frame for ref, _ in items] == list(range(0, N, 3))
    assert items[2][0] == SampleRef(f"videos/{name}#frame=000006", f"videos/{name}", frame=6)
    for ref, arr in items:
        assert isinstance(arr, np.ndarray)
        assert arr.shape == (3, 32, 32)
        assert arr.dtype == np.uint8
        assert arr.flags.c_contiguous
        assert which_frame(centre(arr)) == ref.frame


@pytest.mark.parametrize(("size", "noise"), [(32, True), (12, False)])
def test_frames_are_rendered_like_decode_for_model(tmp_path: Path, size: int, noise: bool) -> None:
    path = make_video(tmp_path / "clip.mp4", "libx264", noise=noise)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for ref, arr in iter_video_frames(path, size, every_n=7):
        assert ref.frame is not None
        png = io.BytesIO()
        Image.fromarray(decoded[ref.frame]).save(png, "PNG")
        want = decode_for_model(png.getvalue(), size)
        if size == 32:  # the 48 px square is resized as it is: the very same pixels
            np.testing.assert_array_equal(arr, want)
        else:  # converted at 1/4 size first (area filter), like a JPEG draft: edges differ
            diff = np.abs(arr.astype(int) - want)
            assert diff.mean() < 2, diff.mean()
            assert diff.max() <= 40, diff.max()  # only along the white corner's edge


def test_max_frames_stops_decoding(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4")
    got = [ref.id for ref, _ in iter_video_frames(path, 16, every_n=2, max_frames=4)]
    assert got == [f"{path.as_posix()}#frame={i:06d}" for i in (0, 2, 4, 6)]
    assert list(iter_video_frames(path, 16, max_frames=0)) == []
    assert len(list(iter_video_frames(path, 16, max_frames=100))) == N


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    # -90: stored landscape, shown turned a quarter clockwise (a phone held upright)
    path = make_video(tmp_path / "phone.mp4", "libx264", n=3, rotation=-90)
    thumb = Image.open(io.BytesIO(frame_thumbnail(path, 1)))
    assert thumb.size == (H, W)
    assert min(thumb.getpixel((H - 3, 2))) > 230  # the white corner went top-right
    assert which_frame(np.asarray(thumb.getpixel((3, W - 3)))) == 1
    (_, arr), *_ = iter_video_frames(path, H)  # centre square of the 48x64 shown frame
    assert arr.min(axis=0)[2, H - 3] > 230
    assert arr.min(axis=0)[2, 2] < 200
    assert arr.min(axis=0)[H - 3, H - 3] < 200


def test_non_square_pixels_are_shown_as_displayed(tmp_path: Path) -> None:
    path = tmp_path / "anamorphic.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 32, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)  # shown as 64x48
        arr = np.zeros((48, 32, 3), np.uint8)
        arr[:, :16] = 255  # left half white
        for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    assert Image.open(io.BytesIO(frame_thumbnail(path, 0))).size == (64, 48)
    ((_, sample),) = iter_video_frames(path, 48)  # the centre 48x48 of the 64x48 picture
    assert isinstance(sample, np.ndarray)
    assert sample[0, 24, :20].min() > 230  # white up to the middle, not a quarter of it
    assert sample[0, 24, 28:].max() < 25


@pytest.mark.parametrize(("codec", "name"), CONTAINERS[:4])
def test_thumbnail_of_frame_n(tmp_path: Path, codec: str, name: str) -> None:
    path = make_video(tmp_path / name, codec)
    for n in (0, 1, 7, 12, N - 1):
        thumb = Image.open(io.BytesIO(frame_thumbnail(path, n, max_side=32)))
        assert thumb.format == "JPEG"
        assert thumb.size == (32, 24)
        assert which_frame(np.asarray(thumb.getpixel((20, 16)))) == n
    with pytest.raises(CorruptImage, match=f"no frame {N}: the video has {N} frames"):
        frame_thumbnail(path, N)
    assert Image.open(io.BytesIO(frame_thumbnail(path, 3, max_side=500))).size == (W, H)


def test_thumbnail_seeks_instead_of_decoding_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_video(tmp_path / "clip.mp4", "libx264")

    def no_sequential_pass(path: Path, max_pixels: int) -> Iterator[object]:
        raise AssertionError("fell back to decoding from the start")

    monkeypatch.setattr(video, "_decode", no_sequential_pass)
    thumb = Image.open(io.BytesIO(frame_thumbnail(path, 17)))
    assert which_frame(np.asarray(thumb.getpixel((40, 30)))) == 17


def corrupt_items(path: Path) -> list[tuple[SampleRef, object]]:
    items = list(iter_video_frames(path, 16, name="v.mp4"))
    assert all(isinstance(item, np.ndarray) for _, item in items[:-1])
    return items


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20, "not a recognised video"),
        (b"hello world\n" * 100, "not a recognised video"),
    ],
)
def test_garbage_yields_one_corrupt_item(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    ((ref, item),) = corrupt_items(path)
    assert ref == SampleRef("v.mp4", "v.mp4")
    assert isinstance(item, CorruptImage)
    assert item.reason.startswith(reason)
    assert str(tmp_path) not in item.reason
    with pytest.raises(CorruptImage, match=reason):
        frame_thumbnail(path, 0)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    ((_, item),) = corrupt_items(tmp_path / "nope.mp4")
    assert isinstance(item, CorruptImage)
    assert item.reason == "unreadable: No such file or directory"


def test_truncated_video_yields_frames_then_one_corrupt_item(tmp_path: Path) -> None:
    # index first (faststart), so a cut-off file still opens and breaks mid-stream
    whole = make_video(
        tmp_path / "whole.mp4", "libx264", options={"movflags": "faststart"}, noise=True
    )
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    items = corrupt_items(cut)
    assert 0 < len(items) - 1 < N
    assert [ref.frame for ref, _ in items[:-1]] == list(range(len(items) - 1))
    ref, item = items[-1]
    assert ref == SampleRef("v.mp4", "v.mp4")
    assert isinstance(item, CorruptImage)
    assert "video data at frame" in item.reason


def test_header_only_video_and_oversized_frames(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mkv", "libx264")
    cut = tmp_path / "head.mkv"
    cut.write_bytes(path.read_bytes()[:100])
    ((_, item),) = corrupt_items(cut)
    assert isinstance(item, CorruptImage)
    ((_, item),) = list(iter_video_frames(path, 16, max_pixels=W * H - 1))
    assert isinstance(item, CorruptImage)
    assert item.reason == f"video too large: {W}x{H} px exceeds limit of {W * H - 1} px"


@pytest.mark.parametrize("max_group", [samples.MAX_GROUP, 2])
def test_frame_refs_get_exactly_one_item_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_group: int
) -> None:
    monkeypatch.setattr(samples, "MAX_GROUP", max_group)  # 2: a pass per two refs
    make_video(tmp_path / "a.mp4")
    refs = [SampleRef.video_frame("a.mp4", n) for n in (3, 11, 19, 25)] + [
        SampleRef.video_frame("a.mp4", 2)  # going back starts a new pass
    ]
    got = list(iter_decoded_samples(tmp_path, refs, 16, workers=2, window=3))
    assert [ref for ref, _ in got] == refs
    for ref, item in got[:3] + got[4:]:
        assert isinstance(item, np.ndarray)
        assert which_frame(centre(item)) == ref.frame
    assert isinstance(got[3][1], CorruptImage)
    assert got[3][1].reason == "no frame 25: the video has 20 frames"


def test_argument_checks_and_extensions(tmp_path: Path) -> None:
    assert {".mp4", ".mov", ".mkv", ".avi", ".webm"} == VIDEO_EXTENSIONS
    with pytest.raises(ValueError, match="every_n"):
        iter_video_frames(tmp_path / "x.mp4", 16, every_n=0)
    with pytest.raises(ValueError, match="max_frames"):
        iter_video_frames(tmp_path / "x.mp4", 16, max_frames=-1)
    with pytest.raises(ValueError, match="frame"):
        frame_thumbnail(tmp_path / "x.mp4", -1)
