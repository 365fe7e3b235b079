"""KeyStream: a listing handed out while it runs (the embedding starts on page one)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import pytest
from sift_worker.keystream import KeyStream
from sift_worker.storage import EmptyInputError, ObjectInfo


def _pages(gate: threading.Event, fail: Exception | None = None) -> Iterator[ObjectInfo]:
    yield ObjectInfo("a.jpg", 1)
    yield ObjectInfo("b.jpg", 2)
    assert gate.wait(10), "the test never opened the gate"  # page two is slow to come
    yield ObjectInfo("c.jpg", 3)
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
