"""Workers' counters, reported with their progress, counted once on the operator's registry.

A worker is a batch Job that nobody scrapes. It sends its cumulative counter values
with each progress report (``POST progress``, ``"metrics"``); the broker adds the
increase since the last value it saw for that run to the operator's counters
``sift_worker_<name>_total`` (no label per run). A report carries:

* ``counters``: the worker's values since its reporter started (cumulative);
* ``acknowledged``: the values of the last report a broker answered 200 to;
* ``session``: a random id per reporter (a restarted pod has a new one).

The increase is ``counters - previous``, where ``previous`` is the last value seen
here for the same session, else ``acknowledged``. So a duplicate or retried report
adds nothing; a restarted pod (a new session, values from 0) counts from 0; and a
broker that never saw the run — another replica, a restarted operator, a run whose
state was forgotten after ``idle_seconds`` — adds only what no broker acknowledged.
A lower value within one session is a stale, reordered report: it adds nothing.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sift_worker.metric_names import WORKER_COUNTERS

__all__ = ["MetricsReportError", "WorkerCounters", "WorkerReport", "increase", "parse_report"]

KNOWN = tuple(WORKER_COUNTERS)
MAX_VALUE = 2**53  # a JSON number that is still an exact integer
_SESSION = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_FIELDS = ("session", "counters", "acknowledged")


class MetricsReportError(ValueError):
    """A bad ``metrics`` object; the message names the field (never echoes a long value)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class WorkerReport:
    session: str
    counters: Mapping[str, int]
    acknowledged: Mapping[str, int]


def _field(name: Any) -> str:
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= 40 else text[:40] + "..."


def _values(doc: Any, where: str) -> dict[str, int]:
    if not isinstance(doc, dict):
        raise MetricsReportError(where, "must be an object of counter name -> integer")
    if len(doc) > len(KNOWN):
        raise MetricsReportError(where, f"at most {len(KNOWN)} counters ({', '.join(KNOWN)})")
    out: dict[str, int] = {}
    for name, value in doc.items():
        if name not in WORKER_COUNTERS:
            raise MetricsReportError(
                f"{where}.{_field(name)}", f"not a known counter ({', '.join(KNOWN)})"
            )
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_VALUE:
            raise MetricsReportError(f"{where}.{name}", "must be a non-negative integer")
        out[name] = value
    return out


def parse_report(doc: Any) -> WorkerReport:
    """The body's ``metrics`` object, checked strictly; raises :class:`MetricsReportError`."""
    if not isinstance(doc, dict):
        raise MetricsReportError("metrics", "must be an object")
    for key in doc:
        if key not in _FIELDS:
            raise MetricsReportError(
                f"metrics.{_field(key)}", f"unknown field ({', '.join(_FIELDS)})"
            )
    session = doc.get("session")
    if not isinstance(session, str) or not _SESSION.match(session):
        raise MetricsReportError("metrics.session", "must be 8..64 letters, digits, '-' or '_'")
    counters = _values(doc.get("counters"), "metrics.counters")
    acknowledged = _values(doc.get("acknowledged", {}), "metrics.acknowledged")
    for name, value in acknowledged.items():
        if value > counters.get(name, 0):
            raise MetricsReportError(
                f"metrics.acknowledged.{name}", "is above metrics.counters (counters only grow)"
            )
    return WorkerReport(session, counters, acknowledged)


@dataclass
class _Seen:
    session: str
    values: dict[str, int]
    at: float


def increase(seen: _Seen | None, report: WorkerReport) -> dict[str, int]:
    """What ``report`` adds to each counter, given the last values seen for its run."""
    out = {}
    for name, value in report.counters.items():
        previous = report.acknowledged.get(name, 0)
        if seen is not None and seen.session == report.session:
            previous = max(previous, seen.values.get(name, 0))
        out[name] = max(0, value - previous)
    return out


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class WorkerCounters:
    """The last values per run uid (bounded, idle runs forgotten) and the exported counters."""

    def __init__(
        self,
        export: Mapping[str, _Inc],
        *,
        max_runs: int = 10_000,
        idle_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.export = export
        self.max_runs = max_runs
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, uid: str, report: WorkerReport) -> dict[str, int]:
        """Count ``report`` of run ``uid``; returns what it added (0 for a duplicate)."""
        now = self.clock()
        seen = self._seen.pop(uid, None)
        added = increase(seen, report)
        for name, amount in added.items():
            if amount:
                self.export[name].inc(amount)
        values = dict(report.counters)
        if seen is not None and seen.session == report.session:  # keep the highest seen
            for name, value in seen.values.items():
                values[name] = max(value, values.get(name, 0))
        self._seen[uid] = _Seen(report.session, values, now)  # newest last
        self._forget(now)
        return added

    def _forget(self, now: float) -> None:
        cutoff = now - self.idle_seconds
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if len(self._seen) <= self.max_runs and oldest.at >= cutoff:
                break
            self._seen.popitem(last=False)
