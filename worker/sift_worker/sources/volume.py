"""List the images in a local folder (a mounted volume) in a stable, streaming order.

The order is the contract that makes runs reproducible and resumable: the same tree
always yields the same sequence, whatever the filesystem's own directory order. It is
plain string order of the relative POSIX paths (code point order): each directory's
entries are sorted with sub-directories keyed as ``name + "/"``, which makes the
depth-first walk produce exactly ``sorted(all_paths)`` while holding only the
directories on the current path in memory, so listing ten million files streams.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
from collections.abc import Container, Iterator

from sift_worker.imaging import IMAGE_EXTENSIONS

__all__ = ["iter_volume_files", "parse_relevant_filenames", "read_relevant_filenames"]

logger = logging.getLogger(__name__)


def iter_volume_files(
    root: pathlib.Path,
    *,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
    relevant: Container[str] | None = None,
) -> Iterator[str]:
    """Yield image files under ``root`` as sorted POSIX paths relative to ``root``.

    Extensions match case-insensitively. Hidden files and directories (name starts
    with ``.``) are skipped. Symlinked directories are not followed (no loops, no
    walking out of the volume); symlinked files are listed like files. A sub-directory
    that cannot be read is logged and skipped, so one bad folder does not abort a large
    run; an unreadable ``root`` raises. ``relevant``, when given, keeps only those relative paths.
    """
    root = pathlib.Path(root)
    if not root.is_dir():  # checked now, not at the first next(), so the caller sees it
        if not root.exists():
            raise FileNotFoundError(errno.ENOENT, "image folder not found", str(root))
        raise NotADirectoryError(errno.ENOTDIR, "image folder is not a directory", str(root))
    return _walk(root, frozenset(e.lower() for e in extensions), relevant)


def _walk(
    root: pathlib.Path, suffixes: frozenset[str], relevant: Container[str] | None
) -> Iterator[str]:
    # Depth-first with an explicit stack of per-directory iterators: no recursion limit.
    stack: list[Iterator[tuple[str, str, bool]]] = [_sorted_entries(root, "", strict=True)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        _, rel, is_dir = entry
        if is_dir:
            stack.append(_sorted_entries(root / rel, rel + "/", strict=False))
        elif os.path.splitext(rel)[1].lower() in suffixes and (relevant is None or rel in relevant):
            yield rel


def _sorted_entries(
    directory: pathlib.Path, prefix: str, *, strict: bool
) -> Iterator[tuple[str, str, bool]]:
    """(sort key, relative path, is a real directory) for one directory's visible entries."""
    entries: list[tuple[str, str, bool]] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    # never follow a symlinked directory; a symlinked file counts as a file
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if not is_dir and not entry.is_file():
                        continue  # sockets, fifos, broken links, links to directories
                except OSError:
                    continue
                key = entry.name + "/" if is_dir else entry.name
                entries.append((key, prefix + entry.name, is_dir))
    except OSError as exc:
        if strict:
            raise
        logger.warning("skipping unreadable directory %s: %s", prefix, exc.strerror or exc)
        return iter(())
    entries.sort()
    return iter(entries)


def read_relevant_filenames(path: pathlib.Path) -> list[str]:
    """Read a list of relative filenames, one per line, normalised like the listing.

    Blank lines and ``#`` comment lines are ignored; whitespace, a leading ``./`` and
    empty or ``.`` components are dropped; duplicates are kept once, in file order.
    Absolute paths and ``..`` components are rejected with a ``ValueError`` naming the
    file and line, because they would point outside the volume.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            errno.ENOENT, "relevant-filenames file not found", str(path)
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return parse_relevant_filenames(text, str(path))


def parse_relevant_filenames(text: str, path: str) -> list[str]:
    """:func:`read_relevant_filenames` on text already read (``path`` names it in errors)."""
    names: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name.startswith("/"):
            raise ValueError(f"{path}:{lineno}: absolute path not allowed: {name!r}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"{path}:{lineno}: '..' not allowed in a relative path: {name!r}")
        if not parts:
            raise ValueError(f"{path}:{lineno}: not a file name: {name!r}")
        names["/".join(parts)] = None
    return list(names)
