"""Tests for sift_worker.sources.volume: listing order, filters, symlinks, relevant-file parsing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from sift_worker.sources import iter_volume_files, read_relevant_filenames


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_order_is_plain_string_order_of_relative_paths(tmp_path: Path) -> None:
    # '-' (0x2d) and '.' (0x2e) sort before '/' (0x2f): a naive per-directory walk
    # would list a/… before a-b.jpg and a.jpg
    names = [
        "a/b.jpg",
        "a-b.jpg",
        "a.jpg",
        "a/a/z.png",
        "a/a.png",
        "a0/c.jpg",
        "B.jpg",
        "b/a.jpg",
        "z.jpg",
        "ü.jpg",
        "10.jpg",
        "9.jpg",
        "a b/c.jpg",
    ]
    touch(tmp_path, *names)
    listed = list(iter_volume_files(tmp_path))
    assert listed == sorted(names)


def test_order_ignores_creation_order(tmp_path: Path) -> None:
    names = [f"d{i % 7}/sub{i % 3}/img{i:03d}.jpg" for i in range(120)]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    touch(tmp_path / "one", *names)
    touch(tmp_path / "two", *shuffled)
    assert list(iter_volume_files(tmp_path / "one")) == sorted(names)
    assert list(iter_volume_files(tmp_path / "two")) == sorted(names)


def test_listing_streams(tmp_path: Path) -> None:
    touch(tmp_path, "a/1.jpg", "b/2.jpg")
    it = iter_volume_files(tmp_path)
    assert next(it) == "a/1.jpg"
    (tmp_path / "b" / "3.jpg").write_bytes(b"x")  # directory b not read yet
    assert list(it) == ["b/2.jpg", "b/3.jpg"]


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("x.jpg", True),
        ("x.JPG", True),
        ("x.JpEg", True),
        ("x.png", True),
        ("x.webp", True),
        ("x.bmp", True),
        ("x.tif", True),
        ("x.TIFF", True),
        ("x.gif", True),
        ("x.txt", False),
        ("x.jpg.txt", False),
        ("jpg", False),
        ("x.heic", False),
        (".hidden.jpg", False),
        (".cache/x.jpg", False),
        ("dir/.thumbs/x.jpg", False),
        ("dir/x.jpg", True),
    ],
)
def test_extension_case_and_hidden(tmp_path: Path, name: str, listed: bool) -> None:
    touch(tmp_path, name)
    assert list(iter_volume_files(tmp_path)) == ([name] if listed else [])


def test_custom_extensions_are_case_insensitive(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "b.HEIC", "c.heic")
    assert list(iter_volume_files(tmp_path, extensions=frozenset({".HEIC"}))) == [
        "b.HEIC",
        "c.heic",
    ]


def test_relevant_filter(tmp_path: Path) -> None:
    touch(tmp_path, "a.jpg", "s/b.jpg", "s/c.jpg", "d.txt")
    relevant = {"s/c.jpg", "a.jpg", "missing.jpg", "d.txt"}
    assert list(iter_volume_files(tmp_path, relevant=relevant)) == ["a.jpg", "s/c.jpg"]
    assert list(iter_volume_files(tmp_path, relevant=[])) == []


def test_symlinked_directories_are_not_followed_and_loops_terminate(tmp_path: Path) -> None:
    touch(tmp_path, "real/a.jpg", "outside/secret.jpg")
    root = tmp_path / "real"
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    assert list(iter_volume_files(root)) == ["a.jpg"]


def test_symlinked_files_are_listed_and_broken_links_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "store/a.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(tmp_path / "store" / "a.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert list(iter_volume_files(root)) == ["link.jpg"]


def test_directories_named_like_images_are_not_files(tmp_path: Path) -> None:
    touch(tmp_path, "album.jpg/inner.png")
    assert list(iter_volume_files(tmp_path)) == ["album.jpg/inner.png"]


def test_unreadable_subdirectory_is_skipped_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    touch(tmp_path, "a.jpg", "locked/b.jpg", "z.jpg")
    real_scandir = os.scandir

    def scandir(path: Path) -> object:  # chmod is not enforced for root: simulate it
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert list(iter_volume_files(tmp_path)) == ["a.jpg", "z.jpg"]
    assert "skipping unreadable directory locked/" in caplog.text


def test_missing_or_non_directory_root_raises_at_call(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        iter_volume_files(tmp_path / "nope")
    touch(tmp_path, "f.jpg")
    with pytest.raises(NotADirectoryError):
        iter_volume_files(tmp_path / "f.jpg")


def test_deep_tree_has_no_recursion_limit(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(150):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.jpg").write_bytes(b"x")
    assert list(iter_volume_files(tmp_path)) == ["d/" * 150 + "x.jpg"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relevant.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_relevant_file_parsing(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# selected by the labelling team\n"
        "a.jpg\n"
        "\n"
        "   ./b/c.png  \n"
        "\t# indented comment\n"
        "b//d.jpg\n"
        "b/./e.jpg\n"
        "a.jpg\n"
        "name with spaces.jpg\r\n"
        "h#sh.jpg\n",
    )
    assert read_relevant_filenames(path) == [
        "a.jpg",
        "b/c.png",
        "b/d.jpg",
        "b/e.jpg",
        "name with spaces.jpg",
        "h#sh.jpg",
    ]


def test_relevant_file_with_bom_and_no_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_bytes("\ufeffx.jpg\ny.jpg".encode())
    assert read_relevant_filenames(path) == ["x.jpg", "y.jpg"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("ok.jpg\n/etc/passwd\n", 2, "absolute path"),
        ("# c\n\n../up.jpg\n", 3, "'..' not allowed"),
        ("a/../../b.jpg\n", 1, "'..' not allowed"),
        ("ok.jpg\nok2.jpg\n./\n", 3, "not a file name"),
    ],
)
def test_relevant_file_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        read_relevant_filenames(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_relevant_file_missing_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        read_relevant_filenames(tmp_path / "nope.txt")
    assert "nope.txt" in str(info.value)


def test_relevant_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9.jpg\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_relevant_filenames(path)


def test_relevant_names_match_the_listing(tmp_path: Path) -> None:
    touch(tmp_path / "data", "x/1.jpg", "x/2.jpg", "y/3.png")
    names = read_relevant_filenames(write(tmp_path, "./x/2.jpg\ny//3.png\n"))
    assert list(iter_volume_files(tmp_path / "data", relevant=set(names))) == ["x/2.jpg", "y/3.png"]
