"""The prefetcher (sift_worker.prefetch): reads ahead in order, bounded, errors raised
only for the object asked for, and a name the decoders reach first is not read twice."""

from __future__ import annotations

import threading
import time

import pytest
from sift_worker.prefetch import Prefetcher


class Store:
    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.reads: list[str] = []
        self.broken = broken
        self.lock = threading.Lock()

    def read(self, name: str) -> bytes:
        with self.lock:
            self.reads.append(name)
        if name in self.broken:
            raise ValueError(f"cannot read {name}")
        return name.encode() * 10


def _wait_for(cond: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():  # type: ignore[operator]
        time.sleep(0.01)


def test_reads_ahead_at_most_ahead_objects_and_each_once() -> None:
    store = Store()
    names = [f"k{i:03d}" for i in range(50)]
    with Prefetcher(store.read, names, workers=4, ahead=8) as pre:
        _wait_for(lambda: len(store.reads) >= 8)
        time.sleep(0.1)
        assert sorted(store.reads) == names[:8]  # bounded: nothing beyond `ahead`
        got = [pre.read_bytes(n) for n in names]
    assert got == [n.encode() * 10 for n in names]
    assert sorted(store.reads) == names  # every object read exactly once


def test_the_byte_budget_bounds_what_is_held() -> None:
    store = Store()
    names = [f"k{i:03d}" for i in range(20)]  # 40 bytes each
    with Prefetcher(store.read, names, workers=1, ahead=100, max_bytes=100) as pre:
        _wait_for(lambda: len(store.reads) >= 3)
        time.sleep(0.1)
        assert len(store.reads) == 3  # 3 x 40 bytes reach the budget: the feeder waits
        assert pre.read_bytes("k000") == b"k000" * 10
        _wait_for(lambda: len(store.reads) >= 4)
        assert len(store.reads) == 4


def test_an_error_is_raised_for_its_object_only() -> None:
    store = Store(broken=frozenset({"k001"}))
    with Prefetcher(store.read, ["k000", "k001", "k002"], workers=2) as pre:
        assert pre.read_bytes("k000") == b"k000" * 10
        with pytest.raises(ValueError, match="cannot read k001"):
            pre.read_bytes("k001")
        assert pre.read_bytes("k002") == b"k002" * 10


def test_a_name_asked_for_first_is_read_directly_and_skipped_by_the_feeder() -> None:
    store = Store()
    gate = threading.Event()

    def names():  # type: ignore[no-untyped-def]
        gate.wait(5)  # the listing is slow: the decoders ask before the feeder sees k000
        yield from ["k000", "k001"]

    with Prefetcher(store.read, names(), workers=1) as pre:
        assert pre.read_bytes("k000") == b"k000" * 10
        gate.set()
        assert pre.read_bytes("k001") == b"k001" * 10
    assert sorted(store.reads) == ["k000", "k001"]  # k000 was not fetched a second time
