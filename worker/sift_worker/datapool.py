"""Datapools: what earlier runs selected (ids + embeddings), for incremental selection.

An incremental run skips samples already in the pool and stays diverse with respect to
it, then appends its own picks. Layout, under the run's output folder::

    datapools/<name>/
        CURRENT                # "gen-000003\\n": the one committed generation
        gen-000003/            # complete and immutable once CURRENT names it
            embeddings.npy     # (M, D) float32
            ids.txt            # M lines, row order
            pool.json          # name, count, dim, generation, created, updated
        gen-000002/            # the previous generation, kept for one more update

An update writes the next generation into a hidden staging folder, fsyncs it, renames
it into place and only then switches ``CURRENT`` (write, fsync, ``os.replace``). A crash
at any point leaves ``CURRENT`` naming the old, untouched generation; the leftovers are
cleared by the next update.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sift_worker.outputs import current_umask

POOLS_DIR = "datapools"
CURRENT = "CURRENT"
_GEN = re.compile(r"gen-(\d{6,})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_STAGING_PREFIX = ".staging-"


class PoolError(Exception):
    """A datapool that cannot be read or updated as asked."""


@dataclass(frozen=True)
class Pool:
    """One committed generation of a datapool."""

    name: str
    ids: list[str]
    embeddings: np.ndarray  # (M, D) float32; (0, 0) for an empty pool
    generation: int  # how many updates made it (0 = empty/new)

    @property
    def dim(self) -> int | None:
        """Embedding width, or None while the pool has never stored anything."""
        return int(self.embeddings.shape[1]) if self.generation > 0 else None


def _pool_dir(output_dir: Path, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise PoolError(
            f"invalid datapool name {name!r}: use letters, digits, '.', '_' and '-'"
            " (starting with a letter or digit)"
        )
    return output_dir / POOLS_DIR / name


def _gen_name(generation: int) -> str:
    return f"gen-{generation:06d}"


def _empty(name: str) -> Pool:
    return Pool(name, [], np.zeros((0, 0), dtype=np.float32), 0)


def _read_current(pool_dir: Path) -> str | None:
    """The committed generation's folder name, or None for a pool never committed."""
    pointer = pool_dir / CURRENT
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolError(f"cannot read datapool pointer {pointer}: {exc}") from exc
    if not _GEN.fullmatch(text):
        raise PoolError(f"corrupt datapool pointer {pointer}: {text[:80]!r} is no generation")
    return text


def _read_meta(pool_dir: Path, gen: str, name: str) -> dict[str, Any]:
    meta_path = pool_dir / gen / "pool.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        count, dim, generation = int(meta["count"]), int(meta["dim"]), int(meta["generation"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PoolError(f"corrupt datapool metadata {meta_path}: {exc}") from exc
    if meta.get("name") != name or generation != int(gen.removeprefix("gen-")):
        raise PoolError(
            f"corrupt datapool metadata {meta_path}: says pool {meta.get('name')!r}"
            f" generation {generation}, expected {name!r} {gen}"
        )
    if count < 0 or dim < 0:
        raise PoolError(f"corrupt datapool metadata {meta_path}: count {count}, dim {dim}")
    return dict(meta)


def _load_generation(pool_dir: Path, gen: str, name: str) -> Pool:
    meta = _read_meta(pool_dir, gen, name)
    count, dim, generation = int(meta["count"]), int(meta["dim"]), int(meta["generation"])
    folder = pool_dir / gen
    emb_path = folder / "embeddings.npy"
    try:
        embeddings = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise PoolError(f"corrupt datapool embeddings {emb_path}: {exc}") from exc
    if embeddings.dtype != np.float32 or embeddings.shape != (count, dim):
        raise PoolError(
            f"corrupt datapool embeddings {emb_path}: {embeddings.dtype} {embeddings.shape},"
            f" pool.json says float32 ({count}, {dim})"
        )
    ids_path = folder / "ids.txt"
    try:
        text = ids_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolError(f"corrupt datapool ids {ids_path}: {exc}") from exc
    ids = text.split("\n")[:-1] if text.endswith("\n") else None
    if ids is None or len(ids) != count or len(set(ids)) != count:
        found = "unterminated" if ids is None else f"{len(ids)} lines, {len(set(ids))} unique"
        raise PoolError(f"corrupt datapool ids {ids_path}: {found}, expected {count} unique ids")
    return Pool(name, ids, embeddings, generation)


def load_pool(output_dir: Path, name: str) -> Pool:
    """The committed generation of pool ``name``; an empty pool if there is none yet.

    Raises PoolError, naming the file, if the committed generation is damaged: silently
    starting over would let the next run re-select everything the pool holds.
    """
    pool_dir = _pool_dir(output_dir, name)
    gen = _read_current(pool_dir)
    if gen is None:
        return _empty(name)
    return _load_generation(pool_dir, gen, name)


def pooled_mask(pool: Pool, ids: Sequence[str]) -> np.ndarray:
    """(N,) bool: which candidate ids the pool already holds."""
    held = set(pool.ids)
    return np.fromiter((i in held for i in ids), dtype=bool, count=len(ids))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes | np.ndarray) -> None:
    """Write (arrays as .npy, streamed: no second in-memory copy) and fsync a file.

    Only used inside the staging folder, which nobody reads, so no temporary name needed.
    """
    with open(path, "wb") as fh:
        if isinstance(data, np.ndarray):
            np.save(fh, data, allow_pickle=False)
        else:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _switch_current(pool_dir: Path, gen: str) -> None:
    """Point CURRENT at ``gen``: the commit. ``outputs.atomic_write_bytes`` does not fsync,
    and a pointer that survives a power cut empty would lose the whole pool."""
    fd, tmp = tempfile.mkstemp(dir=pool_dir, prefix=f".{CURRENT}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(f"{gen}\n".encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, pool_dir / CURRENT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(pool_dir)


@contextlib.contextmanager
def _locked(pool_dir: Path) -> Iterator[None]:
    """Serialise updates of one pool (two runs appending at once would lose one's picks)."""
    with open(pool_dir / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _prune(pool_dir: Path, keep: set[str]) -> None:
    """Drop generations older than the previous one, and staging leftovers of crashes."""
    for entry in pool_dir.iterdir():
        stale_gen = _GEN.fullmatch(entry.name) and entry.name not in keep
        if entry.is_dir() and (stale_gen or entry.name.startswith(_STAGING_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_pool(
    output_dir: Path, pool: Pool, new_ids: Sequence[str], new_embeddings: np.ndarray
) -> Pool:
    """Append ``new_ids`` / ``new_embeddings`` to ``pool`` as its next generation.

    ``pool`` must be the committed generation (as ``load_pool`` returned it): an update
    based on a stale pool would drop what the other writer added, so it raises. New ids
    must be new (the caller skips pooled samples with ``pooled_mask``), and embeddings
    must have the pool's width (another model's embeddings are not comparable). With no
    new rows nothing is written.
    """
    new = np.asarray(new_embeddings)
    if new.ndim != 2 or new.shape[0] != len(new_ids):
        raise PoolError(
            f"datapool {pool.name!r}: {len(new_ids)} new ids but embeddings of shape {new.shape}"
        )
    if pool.dim is not None and new.shape[1] != pool.dim:
        raise PoolError(
            f"datapool {pool.name!r} holds {pool.dim}-dimensional embeddings, the new ones are"
            f" {new.shape[1]}-dimensional: was the pool built with a different model?"
        )
    held = set(pool.ids)
    clashes = [i for i in new_ids if i in held]
    if len(set(new_ids)) != len(new_ids):
        clashes += sorted(i for i, n in Counter(new_ids).items() if n > 1)
    if clashes:
        raise PoolError(
            f"datapool {pool.name!r}: {len(clashes)} new ids already in the pool or repeated,"
            f" e.g. {clashes[:3]}; skip pooled samples before selecting"
        )
    bad = [i for i in new_ids if "\n" in i]
    if bad:
        raise PoolError(f"datapool {pool.name!r}: ids must not contain newlines: {bad[:3]!r}")
    if not new_ids:
        return pool

    pool_dir = _pool_dir(output_dir, pool.name)
    pool_dir.mkdir(parents=True, exist_ok=True)
    with _locked(pool_dir):
        current = _read_current(pool_dir)
        on_disk = 0 if current is None else int(current.removeprefix("gen-"))
        if on_disk != pool.generation:
            raise PoolError(
                f"datapool {pool.name!r} is at generation {on_disk} on disk but the update is"
                f" based on generation {pool.generation}: another run updated it; reload it"
            )
        now = _now()
        created = (
            now if current is None else _read_meta(pool_dir, current, pool.name).get("created", now)
        )
        generation = pool.generation + 1
        gen = _gen_name(generation)
        ids = [*pool.ids, *new_ids]
        embeddings = np.ascontiguousarray(
            np.concatenate([pool.embeddings.reshape(-1, new.shape[1]), new]), dtype=np.float32
        )
        meta = {
            "name": pool.name,
            "count": len(ids),
            "dim": int(embeddings.shape[1]),
            "generation": generation,
            "created": created,
            "updated": now,
            "added": len(new_ids),
        }
        staging = Path(tempfile.mkdtemp(dir=pool_dir, prefix=f"{_STAGING_PREFIX}{gen}."))
        try:
            _write_durable(staging / "embeddings.npy", embeddings)
            _write_durable(staging / "ids.txt", "".join(f"{i}\n" for i in ids).encode("utf-8"))
            _write_durable(staging / "pool.json", (json.dumps(meta, indent=2) + "\n").encode())
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the pool
            _fsync(staging)
            target = pool_dir / gen
            if target.exists():  # left by a crash between rename and switch: never committed
                shutil.rmtree(target)
            staging.rename(target)
            _fsync(pool_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _switch_current(pool_dir, gen)
        _prune(pool_dir, {gen, *([current] if current else [])})
    return Pool(pool.name, ids, embeddings, generation)
