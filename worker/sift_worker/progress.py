"""Progress for long stages: a bar on a terminal, periodic log lines elsewhere.

In a pod (no TTY) or with JSON logs, a bar would be noise; a line every few
seconds with done/total/rate is what ``kubectl logs`` readers want.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger("sift.progress")

ProgressListener = Callable[[str, int, int | None], None]


class StageProgress(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _BarStage:
    def __init__(self, bar: tqdm, notify: Callable[[int], None]) -> None:
        self._bar = bar
        self._notify = notify

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)
        self._notify(n)


class _LogStage:
    def __init__(
        self, stage: str, total: int | None, interval: float, notify: Callable[[int], None]
    ) -> None:
        self.stage, self.total, self.interval = stage, total, interval
        self.done = 0
        self.start = self._last = time.monotonic()
        self._notify = notify

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._notify(n)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.emit()

    def emit(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        total = f"/{self.total}" if self.total is not None else ""
        log.info(
            "%s: %d%s%s, %.1f/s",
            self.stage,
            self.done,
            total,
            pct,
            rate,
            extra={
                "stage": self.stage,
                "done": self.done,
                "total": self.total,
                "rate": round(rate, 2),
            },
        )


class Progress:
    """Factory of per-stage progress; ``listener`` also gets (stage, done, total) updates."""

    def __init__(
        self,
        *,
        bars: bool | None = None,
        interval: float = 5.0,
        listener: ProgressListener | None = None,
    ) -> None:
        self.bars = sys.stderr.isatty() if bars is None else bars
        self.interval = interval
        self.listener = listener

    @contextmanager
    def stage(self, name: str, total: int | None, unit: str = "img") -> Iterator[StageProgress]:
        done = 0

        def notify(n: int) -> None:
            nonlocal done
            done += n
            if self.listener is not None:
                self.listener(name, done, total)

        if self.bars:
            with tqdm(
                total=total, desc=name, unit=unit, dynamic_ncols=True, file=sys.stderr
            ) as bar:
                yield _BarStage(bar, notify)
        else:
            stage = _LogStage(name, total, self.interval, notify)
            yield stage
            stage.emit()
