import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sift_worker.datapool as datapool
from sift_worker.datapool import Pool, PoolError, load_pool, pooled_mask, save_pool


def rows(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def pool_dir(out: Path, name: str = "main") -> Path:
    return out / "datapools" / name


def test_missing_pool_is_empty(tmp_path: Path) -> None:
    pool = load_pool(tmp_path, "main")
    assert isinstance(pool, Pool)
    assert (pool.name, pool.ids, pool.generation) == ("main", [], 0)
    assert pool.embeddings.shape == (0, 0)
    assert pool.embeddings.dtype == np.float32
    assert pool.dim is None
    assert not pooled_mask(pool, ["a"]).any()
    assert not (tmp_path / "datapools").exists()  # loading creates nothing


def test_round_trip_across_three_generations(tmp_path: Path) -> None:
    pool = load_pool(tmp_path, "main")
    added = [(["a", "b"], rows(2, seed=1)), (["c"], rows(1, seed=2)), (["d", "e"], rows(2, seed=3))]
    for generation, (ids, emb) in enumerate(added, start=1):
        pool = save_pool(tmp_path, pool, ids, emb)
        assert pool.generation == generation
        loaded = load_pool(tmp_path, "main")
        assert loaded.ids == pool.ids
        assert loaded.generation == generation
        assert np.array_equal(loaded.embeddings, pool.embeddings)
        pool = loaded
    assert pool.ids == ["a", "b", "c", "d", "e"]
    assert np.array_equal(pool.embeddings, np.concatenate([e for _, e in added]))
    assert pooled_mask(pool, ["x", "c", "e", "y"]).tolist() == [False, True, True, False]

    folder = pool_dir(tmp_path)
    assert (folder / "CURRENT").read_text() == "gen-000003\n"
    # the previous generation stays, older ones are pruned
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["gen-000002", "gen-000003"]
    meta = json.loads((folder / "gen-000003" / "pool.json").read_text())
    first = json.loads((folder / "gen-000002" / "pool.json").read_text())
    assert meta["name"] == "main"
    assert meta["count"] == 5
    assert meta["dim"] == 4
    assert meta["generation"] == 3
    assert meta["added"] == 2
    assert meta["created"] == first["created"]
    assert meta["updated"] >= meta["created"]


def test_no_new_rows_writes_nothing(tmp_path: Path) -> None:
    pool = save_pool(tmp_path, load_pool(tmp_path, "main"), ["a"], rows(1))
    assert save_pool(tmp_path, pool, [], np.zeros((0, 4), np.float32)) is pool
    assert load_pool(tmp_path, "main").generation == 1


@pytest.mark.parametrize(
    ("fail_at", "nth_call"),
    [
        ("_write_durable", 1),  # embeddings half written
        ("_write_durable", 2),  # embeddings written, ids half written
        ("_fsync", 2),  # generation renamed into place, CURRENT not switched
        ("_switch_current", 1),  # the commit itself
    ],
)
def test_crash_during_save_leaves_old_pool_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str, nth_call: int
) -> None:
    pool = save_pool(tmp_path, load_pool(tmp_path, "main"), ["a", "b"], rows(2, seed=1))
    pool = save_pool(tmp_path, pool, ["c"], rows(1, seed=2))
    calls = 0
    real = getattr(datapool, fail_at)

    def crash(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == nth_call:
            if fail_at == "_write_durable":
                Path(str(args[0])).write_bytes(b"\x93NUMPY half a fi")
            raise OSError("disk on fire")
        return real(*args)

    monkeypatch.setattr(datapool, fail_at, crash)
    with pytest.raises(OSError, match="disk on fire"):
        save_pool(tmp_path, pool, ["d"], rows(1, seed=3))
    monkeypatch.undo()

    after = load_pool(tmp_path, "main")
    assert after.generation == 2
    assert after.ids == ["a", "b", "c"]
    assert np.array_equal(after.embeddings, pool.embeddings)
    # the next update works and clears what the crash left behind
    again = save_pool(tmp_path, after, ["d"], rows(1, seed=3))
    assert load_pool(tmp_path, "main").ids == ["a", "b", "c", "d"] == again.ids
    names = {p.name for p in pool_dir(tmp_path).iterdir()}
    assert names == {".lock", "CURRENT", "gen-000002", "gen-000003"}


def test_dimension_mismatch(tmp_path: Path) -> None:
    pool = save_pool(tmp_path, load_pool(tmp_path, "main"), ["a"], rows(1, dim=4))
    with pytest.raises(PoolError, match=r"4-dimensional.*8-dimensional"):
        save_pool(tmp_path, pool, ["b"], rows(1, dim=8))


def test_duplicate_ids(tmp_path: Path) -> None:
    pool = save_pool(tmp_path, load_pool(tmp_path, "main"), ["a", "b"], rows(2))
    with pytest.raises(PoolError, match=r"already in the pool.*'b'"):
        save_pool(tmp_path, pool, ["c", "b"], rows(2))
    with pytest.raises(PoolError, match=r"'c'"):
        save_pool(tmp_path, pool, ["c", "c"], rows(2))
    with pytest.raises(PoolError, match="2 new ids but embeddings of shape"):
        save_pool(tmp_path, pool, ["x", "y"], rows(3))
    assert load_pool(tmp_path, "main").generation == 1


def test_stale_pool_is_refused(tmp_path: Path) -> None:
    empty = load_pool(tmp_path, "main")
    save_pool(tmp_path, empty, ["a"], rows(1))
    with pytest.raises(PoolError, match="another run updated it"):
        save_pool(tmp_path, empty, ["b"], rows(1))


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            lambda d: (d / "gen-000001" / "embeddings.npy").write_bytes(b"\x93NUMPY junk"),
            "embeddings.npy",
        ),
        (lambda d: (d / "gen-000001" / "pool.json").write_text("{"), "pool.json"),
        (lambda d: (d / "gen-000001" / "ids.txt").write_text("a\n"), "ids.txt"),
        (lambda d: (d / "CURRENT").write_text("garbage"), "CURRENT"),
        (lambda d: (d / "CURRENT").write_text("gen-000009\n"), "pool.json"),
    ],
)
def test_corrupt_pool_names_the_file(
    tmp_path: Path, damage: Callable[[Path], object], named: str
) -> None:
    save_pool(tmp_path, load_pool(tmp_path, "main"), ["a", "b"], rows(2))
    damage(pool_dir(tmp_path))
    with pytest.raises(PoolError, match=named) as err:
        load_pool(tmp_path, "main")
    assert str(pool_dir(tmp_path)) in str(err.value)


def test_invalid_names(tmp_path: Path) -> None:
    for name in ("", "..", "../x", "a/b", ".hidden", "pool\n"):
        with pytest.raises(PoolError, match="invalid datapool name"):
            load_pool(tmp_path, name)
