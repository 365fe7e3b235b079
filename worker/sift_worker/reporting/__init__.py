"""Reporting to the results API: only what ``spec.report.share`` allows, and nothing lost.

A finished run's outputs become an outbox of request bodies in ``<output>/report/``
(:mod:`.outbox`), which :mod:`.send` delivers through :class:`.client.ResultsClient`
and can resume at any time (``sift-worker report FILE``). See docs/reporting.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import httpx

from sift_worker.api.v1alpha1 import SelectionRun
from sift_worker.reporting.client import ResultsClient, RetryPolicy, read_token
from sift_worker.reporting.outbox import Outbox, OutboxState, build_outbox
from sift_worker.reporting.send import SendResult, send_outbox

__all__ = ["SendResult", "report_run", "write_termination_message"]

log = logging.getLogger("sift.reporting")

TERMINATION_LOG = "/dev/termination-log"


def report_run(
    run: SelectionRun,
    output_dir: Path,
    input_dir: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
    retry: RetryPolicy | None = None,
    build: bool = True,
    new_run: bool = False,
) -> SendResult:
    """Write (or reuse) the outbox of a finished run, then send what is unacknowledged.

    No ``spec.report``: nothing is written or sent (``Disabled``). API trouble never
    raises: the result says ``Pending`` (try again later) or ``Rejected`` (a 4xx).
    """
    if run.spec.report is None:
        return SendResult("Disabled", "spec.report is not set: nothing is sent", 0, 0, 0)
    outbox = (
        build_outbox(run, output_dir, input_dir, new_run=new_run)
        if build
        else Outbox.open(output_dir)
    )
    if outbox is None:
        raise FileNotFoundError(f"{output_dir}/report/outbox.json: no outbox to send")
    state = OutboxState.load(outbox.folder)
    if state.completed:
        return SendResult("Reported", "", 0, len(state.acked), outbox.chunks)
    env_map = os.environ if env is None else env
    try:
        token = read_token(env_map)
    except ValueError as exc:
        state.reported, state.reason = "Pending", str(exc)
        state.save(outbox.folder)
        log.warning("report pending: %s", exc)
        return SendResult("Pending", str(exc), 0, len(state.acked), outbox.chunks)
    if retry is None:
        retry = _retry_from_env(env_map)
    with ResultsClient(outbox.api_url, token, transport=transport, retry=retry) as client:
        return send_outbox(outbox, client)


def _retry_from_env(env: Mapping[str, str]) -> RetryPolicy:
    """``SIFT_REPORT_RETRY_BUDGET``: seconds to keep retrying one request (default 300)."""
    raw = env.get("SIFT_REPORT_RETRY_BUDGET")
    if not raw:
        return RetryPolicy()
    try:
        budget = float(raw)
    except ValueError:
        log.warning("SIFT_REPORT_RETRY_BUDGET=%r is not a number; using the default", raw[:20])
        return RetryPolicy()
    return RetryPolicy(budget=max(0.0, budget), base=min(0.5, max(budget, 0.01) / 10))


def write_termination_message(result: SendResult, env: Mapping[str, str] | None = None) -> None:
    """Tell the operator the Reported state through the pod's termination message.

    Written to ``$SIFT_TERMINATION_LOG`` or, in a container, ``/dev/termination-log``
    (Kubernetes' default terminationMessagePath); skipped where neither exists.
    """
    env_map = os.environ if env is None else env
    path = Path(env_map.get("SIFT_TERMINATION_LOG", TERMINATION_LOG))
    if "SIFT_TERMINATION_LOG" not in env_map and not path.exists():
        return
    message = {
        "reported": result.reported,
        "reason": result.reason[:1024],
        "chunks": result.chunks,
        "acked": result.acked,
    }
    try:
        path.write_text(json.dumps(message), encoding="utf-8")
    except OSError as exc:
        log.debug("no termination message: %s", exc)
