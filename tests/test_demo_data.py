"""Tests for sift_worker.demo_data: determinism, decoding, corrupt files, duplicates, clusters."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sift_worker.demo_data import CLUSTER_NAMES, DemoDataset, generate_demo_dataset
from sift_worker.imaging import CorruptImage, decode_for_model, make_thumbnail
from sift_worker.sources import iter_volume_files


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


def good_files(ds: DemoDataset) -> list[str]:
    return [rel for files in ds.clusters.values() for rel in files]


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_default_layout(demo: DemoDataset) -> None:
    assert list(demo.clusters) == list(CLUSTER_NAMES)
    assert CLUSTER_NAMES == (
        "red-circles",
        "blue-stripes",
        "green-checkers",
        "yellow-triangles",
        "purple-clouds",
        "orange-sunsets",
        "gray-grids",
        "teal-waves",
    )
    for name, files in demo.clusters.items():
        assert len(files) == 40
        assert all(f.startswith(f"scenes/{name}/img_") for f in files)
    assert len(demo.duplicates) == 6
    assert sorted(demo.corrupt.values()) == sorted(["empty", "truncated", "identify", "too large"])
    # the listing finds exactly what was generated, nothing else
    expected = set(good_files(demo)) | set(demo.duplicates) | set(demo.corrupt)
    assert len(expected) == 8 * 40 + 6 + 4
    assert set(iter_volume_files(demo.root)) == expected
    assert set(digests(demo.root)) == expected


def test_every_good_file_decodes(demo: DemoDataset) -> None:
    for rel in good_files(demo) + list(demo.duplicates):
        arr = decode_for_model(demo.root / rel, 32)
        assert arr.shape == (3, 32, 32)
        assert arr.std() > 3, f"{rel} decodes flat"


def test_formats_and_modes_are_mixed(demo: DemoDataset) -> None:
    formats: Counter[str] = Counter()
    modes: set[str] = set()
    oriented = 0
    for rel in good_files(demo):
        with Image.open(demo.root / rel) as im:
            formats[im.format or "?"] += 1
            modes.add(im.mode)
            oriented += im.getexif().get(0x0112, 1) != 1
    assert set(formats) == {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
    assert formats["JPEG"] > sum(formats.values()) / 2  # mostly JPEG, like real folders
    assert {"RGB", "L", "RGBA", "P", "CMYK", "I;16"} <= modes
    assert oriented >= 10
    sixteen_bit = [rel for rel in good_files(demo) if Image.open(demo.root / rel).mode == "I;16"]
    assert len(sixteen_bit) == 1
    assert sixteen_bit[0].endswith(".png")


def test_exif_rotated_files_display_landscape(demo: DemoDataset) -> None:
    for rel in good_files(demo)[:24]:
        with Image.open(demo.root / rel) as im:
            rotated = im.getexif().get(0x0112, 1) in (6, 8)
            assert im.size == ((240, 320) if rotated else (320, 240)), rel
        thumb = Image.open(io.BytesIO(make_thumbnail(demo.root / rel, 64)))
        assert thumb.size == (64, 48), rel


def test_every_corrupt_file_raises_with_its_keyword(demo: DemoDataset) -> None:
    for rel, keyword in demo.corrupt.items():
        with pytest.raises(CorruptImage) as info:
            decode_for_model(demo.root / rel, 64)
        assert keyword in info.value.reason, (rel, info.value.reason)
    sizes = {rel: (demo.root / rel).stat().st_size for rel in demo.corrupt}
    assert sizes["broken/empty.jpg"] == 0
    assert sizes["broken/huge.png"] < 200  # claims 100000x100000 px


def test_duplicates_are_byte_equal_copies_of_good_images(demo: DemoDataset) -> None:
    good = set(good_files(demo))
    assert len(set(demo.duplicates.values())) == len(demo.duplicates)
    for copy, original in demo.duplicates.items():
        assert copy.startswith("copies/")
        assert original in good
        assert copy not in good
        assert (demo.root / copy).read_bytes() == (demo.root / original).read_bytes()
        assert Path(copy).suffix == Path(original).suffix


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    centroids = np.stack([features[labels == k].mean(0) for k in range(labels.max() + 1)])
    dist = ((features[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels).mean())


def decoded(demo: DemoDataset, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for k, files in enumerate(demo.clusters.values()):
        for rel in files:
            images.append(decode_for_model(demo.root / rel, size))
            labels.append(k)
    return np.stack(images), np.array(labels)


def test_clusters_have_distinct_mean_colours(demo: DemoDataset) -> None:
    images, labels = decoded(demo, 32)
    means = images.astype(np.float64).mean(axis=(2, 3))
    centroids = np.stack([means[labels == k].mean(0) for k in range(8)])
    gaps = np.sqrt(((centroids[:, None] - centroids[None]) ** 2).sum(-1))
    assert gaps[~np.eye(8, dtype=bool)].min() > 25
    # a few greyscale files are expected to fall outside their cluster on colour alone
    assert nearest_centroid_accuracy(means, labels) > 0.85


def test_clusters_separate_with_a_random_cnn(demo: DemoDataset) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    images, labels = decoded(demo, 64)
    with torch.no_grad():
        x = torch.from_numpy(images).float() / 255.0 - 0.5
        emb = torch.nn.functional.normalize(net(x), dim=1).numpy()
    assert nearest_centroid_accuracy(emb, labels) > 0.9


SMALL: dict[str, Any] = {
    "clusters": 8,
    "per_cluster": 12,
    "duplicates": 3,
    "corrupt": 4,
    "size": (96, 64),
}


def test_deterministic_across_runs_and_folders(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", **SMALL)
    b = generate_demo_dataset(tmp_path / "nested" / "b", **SMALL)
    assert digests(a.root) == digests(b.root)
    assert (a.clusters, a.duplicates, a.corrupt) == (b.clusters, b.duplicates, b.corrupt)
    c = generate_demo_dataset(tmp_path / "c", **{**SMALL, "seed": 1})
    assert c.clusters == a.clusters  # same names and formats...
    assert all(digests(c.root)[f] != digests(a.root)[f] for f in good_files(a))  # other pixels


TINY: dict[str, Any] = {"clusters": 1, "per_cluster": 1, "duplicates": 0, "corrupt": 0}


def test_refuses_to_mix_with_existing_files(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_demo_dataset(tmp_path / "data", **TINY)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine.jpg"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(tmp_path / "file", **TINY)
    (tmp_path / "empty").mkdir()
    assert generate_demo_dataset(tmp_path / "empty", **TINY).clusters


def test_tiny_and_corrupt_heavy_configurations(tmp_path: Path) -> None:
    ds = generate_demo_dataset(
        tmp_path / "d", clusters=2, per_cluster=1, duplicates=2, corrupt=9, size=(32, 16)
    )
    assert [len(v) for v in ds.clusters.values()] == [1, 1]
    assert len(ds.duplicates) == 2
    assert len(ds.corrupt) == 9
    assert Counter(ds.corrupt.values()) == {
        "empty": 3,
        "truncated": 2,
        "identify": 2,
        "too large": 2,
    }
    for rel, keyword in ds.corrupt.items():
        with pytest.raises(CorruptImage, match=keyword):
            decode_for_model(ds.root / rel, 16)
    for rel in good_files(ds):
        assert decode_for_model(ds.root / rel, 16).shape == (3, 16, 16)
    assert generate_demo_dataset(tmp_path / "e", clusters=1, per_cluster=1, duplicates=0, corrupt=0)


def test_more_than_eight_clusters_get_unique_names(tmp_path: Path) -> None:
    ds = generate_demo_dataset(
        tmp_path / "d", clusters=20, per_cluster=1, duplicates=0, corrupt=0, size=(32, 32)
    )
    assert len(set(ds.clusters)) == 20
    assert list(ds.clusters)[:8] == list(CLUSTER_NAMES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clusters": 0},
        {"clusters": 65},
        {"per_cluster": 0},
        {"duplicates": -1},
        {"clusters": 1, "per_cluster": 2, "duplicates": 3},
        {"corrupt": -1},
        {"size": (8, 100)},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        generate_demo_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
