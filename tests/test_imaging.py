"""Tests for sift_worker.imaging: every mode and format decodes, every corrupt kind is caught."""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from sift_worker import imaging
from sift_worker.imaging import (
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    CorruptImage,
    decode_for_model,
    make_thumbnail,
)

W, H = 96, 64  # non-square on purpose: exercises the centre crop


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def gradient_rgb(w: int = W, h: int = H) -> Image.Image:
    """Dark on the left, bright on the right, with some colour."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    rgb = np.stack([x, x * 0.8 + 20, 255 - x * 0.5], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def gradient_array(lo: float, hi: float, dtype: type, w: int = W, h: int = H) -> np.ndarray:
    return np.linspace(lo, hi, w)[None, :].repeat(h, 0).astype(dtype)


def with_alpha(mode: str) -> Image.Image:
    im = gradient_rgb().convert(mode)
    im.putalpha(255)
    return im


def p_with_transparency() -> Image.Image:
    im = gradient_rgb().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    im.info["transparency"] = 255  # an unused palette index: nothing actually transparent
    return im


# (mode/format id, image factory, format, save params)
MODE_CASES: list[tuple[str, Callable[[], Image.Image], str, dict[str, object]]] = [
    ("RGB-jpeg", gradient_rgb, "JPEG", {"quality": 95}),
    ("RGB-progressive-jpeg", gradient_rgb, "JPEG", {"progressive": True}),
    ("RGB-png", gradient_rgb, "PNG", {}),
    ("RGB-webp", gradient_rgb, "WEBP", {"quality": 90}),
    ("RGB-bmp", gradient_rgb, "BMP", {}),
    ("RGB-tiff", gradient_rgb, "TIFF", {}),
    ("RGB-tiff-deflate", gradient_rgb, "TIFF", {"compression": "tiff_deflate"}),
    ("RGB-gif", gradient_rgb, "GIF", {}),
    ("L-jpeg", lambda: gradient_rgb().convert("L"), "JPEG", {}),
    ("L-png", lambda: gradient_rgb().convert("L"), "PNG", {}),
    ("LA-png", lambda: with_alpha("L"), "PNG", {}),
    ("P-png", lambda: gradient_rgb().convert("P"), "PNG", {}),
    ("P-transparency-png", p_with_transparency, "PNG", {}),
    ("P-transparency-gif", p_with_transparency, "GIF", {}),
    ("RGBA-png", lambda: with_alpha("RGB"), "PNG", {}),
    ("RGBA-webp", lambda: with_alpha("RGB"), "WEBP", {"lossless": True}),
    ("RGBA-tiff", lambda: with_alpha("RGB"), "TIFF", {}),
    ("1-png", lambda: gradient_rgb().convert("1"), "PNG", {}),
    ("1-bmp", lambda: gradient_rgb().convert("1"), "BMP", {}),
    ("1-tiff", lambda: gradient_rgb().convert("1"), "TIFF", {}),
    ("CMYK-jpeg", lambda: gradient_rgb().convert("CMYK"), "JPEG", {"quality": 95}),
    ("CMYK-tiff", lambda: gradient_rgb().convert("CMYK"), "TIFF", {}),
    ("I;16-png", lambda: Image.fromarray(gradient_array(0, 65535, np.uint16)), "PNG", {}),
    ("I;16-tiff", lambda: Image.fromarray(gradient_array(0, 65535, np.uint16)), "TIFF", {}),
    ("I-tiff", lambda: Image.fromarray(gradient_array(-5e5, 2e6, np.int32)), "TIFF", {}),
    ("F-tiff", lambda: Image.fromarray(gradient_array(-3.5, 7.25, np.float32)), "TIFF", {}),
]


@pytest.mark.parametrize(
    ("factory", "fmt", "params"),
    [pytest.param(f, fmt, p, id=case_id) for case_id, f, fmt, p in MODE_CASES],
)
@pytest.mark.parametrize("size", [32, 57])
def test_every_mode_and_format_decodes_to_rgb(
    factory: Callable[[], Image.Image], fmt: str, params: dict[str, object], size: int
) -> None:
    data = encode(factory(), fmt, **params)
    arr = decode_for_model(data, size)
    assert arr.shape == (3, size, size)
    assert arr.dtype == np.uint8
    assert arr.flags.c_contiguous
    # the left-to-right brightness gradient survives whatever the mode
    lum = arr.astype(np.float64).mean(axis=(0, 1))
    quarter = size // 4
    assert lum[-quarter:].mean() - lum[:quarter].mean() > 40, lum


def test_path_and_bytes_give_identical_arrays(tmp_path: Path) -> None:
    data = encode(gradient_rgb(), "JPEG")
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert np.array_equal(decode_for_model(path, 40), decode_for_model(data, 40))


def test_sixteen_bit_full_range_keeps_a_spread_not_white() -> None:
    arr = decode_for_model(
        encode(Image.fromarray(gradient_array(0, 65535, np.uint16, 256, 256)), "PNG"), 128
    )
    assert arr.min() <= 3
    assert arr.max() >= 252
    assert len(np.unique(arr)) > 100


def test_twelve_bit_data_in_sixteen_bit_container_is_stretched_not_black() -> None:
    im = Image.fromarray(gradient_array(0, 4095, np.uint16, 256, 256))
    assert im.mode == "I;16"
    arr = decode_for_model(encode(im, "PNG"), 64)
    assert arr.max() >= 250
    assert arr.min() <= 5


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (65535, 255)])
def test_constant_sixteen_bit_image(value: int, expected: int) -> None:
    im = Image.fromarray(np.full((20, 20), value, np.uint16))
    assert np.all(decode_for_model(encode(im, "PNG"), 16) == expected)


def test_float_image_with_nan_and_inf_is_finite_and_spread() -> None:
    a = gradient_array(-1.0, 1.0, np.float32, 64, 64)
    a[0, 0], a[1, 1], a[2, 2] = np.nan, np.inf, -np.inf
    arr = decode_for_model(encode(Image.fromarray(a), "TIFF"), 32)
    assert arr.max() >= 250
    assert arr.min() <= 5


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("RGBA", "WEBP")])
def test_transparent_area_becomes_the_documented_background(mode: str, fmt: str) -> None:
    im = Image.new(mode, (64, 64), (255, 0, 0, 0) if mode == "RGBA" else (255, 0))
    params = {"lossless": True} if fmt == "WEBP" else {}
    arr = decode_for_model(encode(im, fmt, **params), 32)
    assert np.all(arr.transpose(1, 2, 0) == np.array(ALPHA_BACKGROUND, np.uint8))


def test_half_transparent_red_is_mixed_with_the_background() -> None:
    arr = decode_for_model(encode(Image.new("RGBA", (32, 32), (255, 0, 0, 128)), "PNG"), 16)
    pixel = arr[:, 8, 8].astype(int)
    red = (255, 0, 0)
    expected = [(r * 128 + c * 127) / 255 for r, c in zip(red, ALPHA_BACKGROUND, strict=True)]
    assert np.allclose(pixel, expected, atol=2)


def test_palette_transparency_becomes_background() -> None:
    im = Image.new("P", (32, 32), 1)
    im.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    im.info["transparency"] = 1
    for fmt in ("PNG", "GIF"):
        arr = decode_for_model(encode(im, fmt, transparency=1), 16)
        assert np.all(arr.transpose(1, 2, 0) == np.array(ALPHA_BACKGROUND, np.uint8)), fmt


def test_rgb_png_colour_key_transparency() -> None:
    im = Image.new("RGB", (32, 32), (10, 200, 30))
    arr = decode_for_model(encode(im, "PNG", transparency=(10, 200, 30)), 16)
    assert np.all(arr.transpose(1, 2, 0) == np.array(ALPHA_BACKGROUND, np.uint8))


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    arr = decode_for_model(data, 8)
    assert np.all(arr[0] > 240)
    assert np.all(arr[1:] < 15)


def test_shorter_side_is_resized_then_centre_cropped() -> None:
    # left, middle, right thirds red, green, blue: only green survives a centre crop
    im = Image.new("RGB", (300, 100))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        im.paste(colour, (i * 100, 0, (i + 1) * 100, 100))
    arr = decode_for_model(encode(im, "PNG"), 50)
    assert np.all(arr[1, :, 3:-3] == 255)
    assert np.all(arr[0, :, 3:-3] == 0)
    assert np.all(arr[2, :, 3:-3] == 0)


def test_small_images_are_upscaled_and_size_one_works() -> None:
    data = encode(gradient_rgb(6, 4), "PNG")
    assert decode_for_model(data, 100).shape == (3, 100, 100)
    assert decode_for_model(data, 1).shape == (3, 1, 1)


def test_large_jpeg_decodes_reduced_and_correct() -> None:
    big = gradient_rgb(2400, 1800)
    data = encode(big, "JPEG", quality=90)
    arr = decode_for_model(data, 64)
    reference = np.asarray(
        big.resize((64, 64), Image.Resampling.BICUBIC, box=(300, 0, 2100, 1800))
    ).transpose(2, 0, 1)
    assert np.abs(arr.astype(int) - reference.astype(int)).mean() < 4


def upright_with_red_top_left() -> Image.Image:
    """160x120, red top-left quadrant, blue elsewhere; the centre crop keeps a red corner."""
    im = Image.new("RGB", (160, 120), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 80, 60))
    return im


# orientation tag -> the transpose that *undoes* what a viewer applies (stored = undo(upright))
STORE_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def stored_with_orientation(orientation: int, fmt: str) -> bytes:
    upright = upright_with_red_top_left()
    method = STORE_FOR_ORIENTATION[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    if fmt == "WEBP":
        params["lossless"] = True
    data = encode(stored, fmt, **params)
    # sanity: Pillow's own exif_transpose restores the upright picture
    restored = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert restored.size == upright.size
    return data


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_puts_the_red_corner_top_left(orientation: int, fmt: str) -> None:
    if fmt == "TIFF":  # TIFF keeps orientation in its own tag, not in an EXIF blob
        method = STORE_FOR_ORIENTATION[orientation]
        upright = upright_with_red_top_left()
        stored = upright if method is None else upright.transpose(method)
        data = encode(stored, "TIFF", tiffinfo={0x0112: orientation})
    else:
        data = stored_with_orientation(orientation, fmt)
    arr = decode_for_model(data, 40).astype(int)
    red = (arr[0] > 200) & (arr[2] < 60)
    assert red[:18, :18].all(), f"orientation {orientation}: top-left not red"
    assert not red[22:, :].any()
    assert not red[:, 22:].any()


def test_thumbnail_keeps_aspect_and_applies_orientation() -> None:
    data = stored_with_orientation(6, "JPEG")  # stored 120x160, displayed 160x120
    thumb = Image.open(io.BytesIO(make_thumbnail(data, 80)))
    assert thumb.format == "JPEG"
    assert thumb.size == (80, 60)
    pixel = np.asarray(thumb)[5, 5]
    assert pixel[0] > 200
    assert pixel[2] < 60


def test_thumbnail_is_not_upscaled_and_composites_alpha() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(encode(Image.new("LA", (30, 10)), "PNG"))))
    assert thumb.size == (30, 10)
    assert thumb.mode == "RGB"
    assert np.abs(np.asarray(thumb)[3, 3].astype(int) - ALPHA_BACKGROUND).max() <= 2


def test_thumbnail_of_big_jpeg_fits_max_side() -> None:
    thumb = make_thumbnail(encode(gradient_rgb(3000, 1000), "JPEG"), 192)
    assert Image.open(io.BytesIO(thumb)).size == (192, 64)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_claiming(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header claims ``width`` x ``height`` 1-bit pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def truncated(data: bytes, fraction: float = 0.4) -> bytes:
    return data[: int(len(data) * fraction)]


NOISE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), np.uint8))

CORRUPT_CASES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty file"),
    ("truncated-jpeg", truncated(encode(NOISE, "JPEG")), "truncated"),
    ("truncated-progressive-jpeg", truncated(encode(NOISE, "JPEG", progressive=True)), "truncated"),
    ("truncated-png", truncated(encode(NOISE, "PNG"), 0.6), "truncated"),
    ("truncated-webp", truncated(encode(NOISE, "WEBP")), "undecodable"),
    ("truncated-gif", truncated(encode(NOISE, "GIF")), "truncated"),
    ("truncated-bmp", truncated(encode(NOISE, "BMP")), "truncated"),
    ("truncated-tiff", truncated(encode(NOISE, "TIFF"), 0.9), ""),
    ("jpeg-header-only", encode(NOISE, "JPEG")[:20], ""),
    (
        "random-bytes",
        b"not an image" + np.random.default_rng(2).bytes(4000),
        "not a recognised image (cannot identify format)",
    ),
    ("text", b"hello, world\n" * 50, "cannot identify"),
    ("huge-header", png_claiming(100_000, 100_000), "image too large"),
    ("huge-header-within-pillow-limit", png_claiming(12_000, 12_000), "image too large"),
]

# Pillow warns (DecompressionBombWarning) between its limit and twice its limit.
quiet_bomb_warning = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@quiet_bomb_warning
@pytest.mark.parametrize(
    ("data", "expected"), [pytest.param(d, e, id=i) for i, d, e in CORRUPT_CASES]
)
@pytest.mark.parametrize("decode", [decode_for_model, make_thumbnail])
def test_corrupt_kinds_raise_corrupt_image(
    data: bytes, expected: str, decode: Callable[..., object], tmp_path: Path
) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(CorruptImage) as info:
            decode(source, 64) if decode is decode_for_model else decode(source)
        reason = info.value.reason
        assert expected in reason
        assert reason
        assert str(tmp_path) not in reason
        assert "input.bin" not in reason


def test_too_large_reason_names_the_dimensions_and_limit() -> None:
    with pytest.raises(CorruptImage) as info:
        decode_for_model(encode(gradient_rgb(), "PNG"), 32, max_pixels=1000)
    assert info.value.reason == f"image too large: {W}x{H} px exceeds limit of 1000 px"
    assert decode_for_model(encode(gradient_rgb(), "PNG"), 32, max_pixels=W * H).shape[0] == 3


@pytest.mark.parametrize("pillow_limit", [None, Image.MAX_IMAGE_PIXELS])
def test_header_check_rejects_without_decoding(
    pillow_limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own check must hold even when Pillow's global guard is switched off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    data = png_claiming(200_000, 200_000)  # 40 Gpx: decoding would need 5 GB even at 1 bit
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CorruptImage) as info:
        decode_for_model(data, 224)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "image too large" in info.value.reason
    assert str(DEFAULT_MAX_PIXELS) in info.value.reason
    assert elapsed < 1.0
    assert peak < 5_000_000


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_escalated_decompression_bomb_warning_becomes_corrupt_image() -> None:
    # 90 Mpx: under our limit but over Pillow's warning threshold (89.5 Mpx by default)
    data = png_claiming(10_000, 9_000)
    with pytest.raises(CorruptImage) as info:
        decode_for_model(data, 32)
    assert info.value.reason == (
        f"image too large: 90000000 px exceeds Pillow's decompression-bomb limit"
        f" of {Image.MAX_IMAGE_PIXELS} px"
    )
    with pytest.raises(CorruptImage) as info:
        decode_for_model(png_claiming(12_000, 12_000), 32)
    assert info.value.reason == (
        f"image too large: 144000000 px exceeds limit of {DEFAULT_MAX_PIXELS} px"
    )


@pytest.mark.parametrize(
    ("make_path", "expected"),
    [
        (lambda d: d / "missing.jpg", "unreadable: No such file or directory"),
        (lambda d: d, "unreadable: Is a directory"),
    ],
    ids=["missing", "directory"],
)
def test_unreadable_paths(make_path: Callable[[Path], Path], expected: str, tmp_path: Path) -> None:
    with pytest.raises(CorruptImage) as info:
        decode_for_model(make_path(tmp_path), 32)
    assert info.value.reason == expected


def test_permission_denied_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.jpg"
    path.write_bytes(encode(gradient_rgb(), "JPEG"))

    def denied(file: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    # chmod is not enforced for root, so simulate the OS refusing the open
    monkeypatch.setattr(imaging, "open", denied, raising=False)
    with pytest.raises(CorruptImage) as info:
        decode_for_model(path, 32)
    assert info.value.reason == "unreadable: Permission denied"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_random_corruption_never_escapes_as_another_exception() -> None:
    rng = np.random.default_rng(3)
    originals = [encode(gradient_rgb(), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF")]
    decoded, reasons = 0, []
    for i in range(150):
        data = bytearray(originals[i % len(originals)])
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] = int(rng.integers(0, 256))
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            arr = decode_for_model(bytes(data), 24)
        except CorruptImage as exc:
            reasons.append(exc.reason)
            continue
        assert arr.shape == (3, 24, 24)
        decoded += 1
    assert reasons
    assert all(reasons)


def test_corrupt_image_pickles_with_its_reason() -> None:
    exc = pickle.loads(pickle.dumps(CorruptImage("truncated image data")))
    assert isinstance(exc, CorruptImage)
    assert exc.reason == "truncated image data"


@quiet_bomb_warning
def test_pillow_globals_are_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    for data, _ in [(d, e) for _, d, e in CORRUPT_CASES]:
        with pytest.raises(CorruptImage):
            decode_for_model(data, 16)
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@quiet_bomb_warning
def test_thread_pool_decoding_matches_serial() -> None:
    inputs = [encode(gradient_rgb(200 + i, 150), fmt) for i, fmt in enumerate(["JPEG", "PNG"] * 8)]
    inputs += [d for _, d, _ in CORRUPT_CASES]

    def run(data: bytes) -> np.ndarray | str:
        try:
            return decode_for_model(data, 48)
        except CorruptImage as exc:
            return exc.reason

    serial = [run(d) for d in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            parallel = list(pool.map(run, inputs))
            for a, b in zip(serial, parallel, strict=True):
                assert type(a) is type(b)
                assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_sizes_are_programming_errors(bad: int) -> None:
    data = encode(gradient_rgb(), "PNG")
    with pytest.raises(ValueError, match="positive"):
        decode_for_model(data, bad)
    with pytest.raises(ValueError, match="positive"):
        make_thumbnail(data, bad)


def test_image_extensions() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
