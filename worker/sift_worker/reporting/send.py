"""Send an outbox: create (or resume) the run, every unacknowledged chunk once, then complete.

Resuming is safe at any point: ``state.json`` records each acknowledged request after
the API answered, and the API's answer to the create request lists the chunks it
already holds (a chunk sent just before a crash, whose acknowledgement never reached
``state.json``, is not sent again). A chunk re-sent anyway carries the same
idempotency key and body, which the API acknowledges without storing it twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sift_worker.reporting.client import (
    ReportRejectedError,
    ReportUnavailableError,
    ResultsClient,
)
from sift_worker.reporting.outbox import Outbox, OutboxState, ReportedState, dumps
from sift_worker.reporting.schema import Heartbeat

log = logging.getLogger("sift.reporting")

HEARTBEAT_EVERY = 10  # chunks


@dataclass(frozen=True)
class SendResult:
    reported: ReportedState  # Reported, Pending (API unavailable: retry later) or Rejected
    reason: str
    sent: int  # chunks sent by this call
    acked: int  # chunks acknowledged in total
    chunks: int


def _heartbeat(client: ResultsClient, uid: str, done: int, total: int) -> None:
    client.heartbeat(uid, dumps(Heartbeat(stage="reporting", done=done, total=total)))


def send_outbox(outbox: Outbox, client: ResultsClient) -> SendResult:
    """Send what the API has not acknowledged; never raises for API trouble."""
    state = OutboxState.load(outbox.folder)
    sent = 0
    if state.completed:
        return SendResult("Reported", "", 0, len(state.acked), outbox.chunks)
    try:
        remote = client.create_run(outbox.run_uid, outbox.create_body())
        state.created = True
        state.acked |= {i for i in remote.received_chunks if 0 <= i < outbox.chunks}
        state.save(outbox.folder)
        todo = [i for i in range(outbox.chunks) if i not in state.acked]
        if todo:
            log.info(
                "report: sending %d of %d chunks to %s", len(todo), outbox.chunks, outbox.api_url
            )
        for n, index in enumerate(todo):
            if n % HEARTBEAT_EVERY == 0:
                _heartbeat(client, outbox.run_uid, len(state.acked), outbox.chunks)
            client.put_chunk(outbox.run_uid, index, outbox.chunk_body(index), outbox.keys[index])
            sent += 1
            state.acked.add(index)
            state.save(outbox.folder)
        client.complete(outbox.run_uid, outbox.complete_body())
    except ReportRejectedError as exc:
        state.reported, state.reason = "Rejected", str(exc)
        state.save(outbox.folder)
        log.error("report rejected: %s", exc)
        return SendResult("Rejected", str(exc), sent, len(state.acked), outbox.chunks)
    except ReportUnavailableError as exc:
        state.reported, state.reason = "Pending", str(exc)
        state.save(outbox.folder)
        log.warning(
            "report pending: %s; %d of %d chunks acknowledged, the rest stay in %s",
            exc,
            len(state.acked),
            outbox.chunks,
            outbox.folder,
        )
        return SendResult("Pending", str(exc), sent, len(state.acked), outbox.chunks)
    state.completed, state.reported, state.reason = True, "Reported", ""
    state.save(outbox.folder)
    log.info("report: complete (%d chunks) at %s", outbox.chunks, outbox.api_url)
    return SendResult("Reported", "", sent, len(state.acked), outbox.chunks)
