"""KeyStream: a listing handed out while it runs (the embedding starts on page one)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sift_worker.keystream import KeyStream, keys_digest
from sift_worker.storage import EmptyInputError, ObjectInfo


def _pages(gate: threading.Event, fail: Exception | None = None) -> Iterator[list[ObjectInfo]]:
    yield [ObjectInfo("a.jpg", 1), ObjectInfo("b.jpg", 2)]
    assert gate.wait(10), "the test never opened the gate"  # page two is slow to come
    yield [ObjectInfo("c.jpg", 3)]
    if fail is not None:
        raise fail


def test_keys_are_handed_out_before_the_listing_ends() -> None:
    gate = threading.Event()
    stream = KeyStream(lambda: _pages(gate))
    it = iter(stream)
    assert [next(it), next(it)] == ["a.jpg", "b.jpg"]  # page one, while page two waits
    assert stream[1] == "b.jpg"
    gate.set()
    assert next(it) == "c.jpg"
    assert list(it) == []
    assert len(stream) == 3
    with pytest.raises(IndexError):
        stream[3]
    keys, digest = stream.result()
    expected = hashlib.sha256(b"a.jpg\x001\x00b.jpg\x002\x00c.jpg\x003\x00").hexdigest()
    assert (keys, digest) == (["a.jpg", "b.jpg", "c.jpg"], expected)


def test_a_listing_error_reaches_whoever_reads_past_the_listed_keys() -> None:
    gate = threading.Event()
    gate.set()
    stream = KeyStream(lambda: _pages(gate, EmptyInputError("s3://b/p/", "no objects")))
    assert stream[2] == "c.jpg"  # listed before the error: still readable
    with pytest.raises(EmptyInputError, match="no objects"):
        stream[3]
    with pytest.raises(EmptyInputError):
        len(stream)
    with pytest.raises(EmptyInputError):
        list(stream)


def test_the_next_page_is_asked_for_only_when_the_reader_gets_close() -> None:
    asked: list[int] = []

    def pages() -> Iterator[list[ObjectInfo]]:
        for p in range(4):
            asked.append(p)
            yield [ObjectInfo(f"{p}-{i}.jpg", i) for i in range(10)]

    stream = KeyStream(pages, ahead=4)
    assert stream[0] == "0-0.jpg"
    time.sleep(0.2)  # time for the listing to run on, were it not bounded
    assert asked == [0]
    assert stream[5] == "0-5.jpg"  # 10 listed, reach 6 + 4 ahead: still enough
    time.sleep(0.1)
    assert asked == [0]
    assert stream[6] == "0-6.jpg"  # within 4 of the end: page two
    _until(lambda: asked == [0, 1])
    assert stream[25] == "2-5.jpg"  # past the listed keys: waits for page three
    _until(lambda: asked == [0, 1, 2])
    assert stream.digest(8, 12) == keys_digest(
        ["0-8.jpg", "0-9.jpg", "1-0.jpg", "1-1.jpg"], [8, 9, 0, 1]
    )
    assert len(stream) == 40  # the whole listing lifts the bound
    assert asked == [0, 1, 2, 3]
    assert stream.digest(38, 45) == keys_digest(["3-8.jpg", "3-9.jpg"], [8, 9])  # its end


def test_a_closed_stream_stops_listing() -> None:
    asked: list[int] = []

    def pages() -> Iterator[list[ObjectInfo]]:
        for p in range(100):
            asked.append(p)
            yield [ObjectInfo(f"{p}.jpg", 1)]

    stream = KeyStream(pages, ahead=1)
    assert stream[1] == "1.jpg"
    stream.close()
    keys, _ = stream.result()
    assert keys[:2] == ["0.jpg", "1.jpg"]
    assert len(asked) < 5  # it stopped where it was


def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
