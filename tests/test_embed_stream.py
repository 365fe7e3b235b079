"""The decode stream keeps order and a bounded number of images in memory."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from sift_worker.embed import decode_in_order
from sift_worker.imaging import CorruptImage


def test_order_bounded_window_and_corrupt_passthrough() -> None:
    live = 0
    peak = 0
    lock = threading.Lock()

    def decode(path: Path) -> np.ndarray:
        nonlocal live, peak
        if path.name == "bad-7":
            raise CorruptImage("truncated image data")
        with lock:
            live += 1
            peak = max(peak, live)
        return np.full((3, 2, 2), int(path.name.split("-")[1]) % 256, np.uint8)

    names = [f"img-{i}" if i != 7 else "bad-7" for i in range(500)]
    seen = []
    for name, item in decode_in_order(Path("/data"), names, decode, workers=3, window=8):
        seen.append(name)
        if isinstance(item, CorruptImage):
            assert name == "bad-7"
            assert item.reason == "truncated image data"
        else:
            assert int(item[0, 0, 0]) == int(name.split("-")[1]) % 256
            with lock:
                live -= 1  # the consumer is done with this image
    assert seen == names
    assert peak <= 8, f"{peak} decoded images held at once; the window is 8"
