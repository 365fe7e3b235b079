"""The counters a worker reports to the operator: one list for both sides.

The worker counts them on its own registry (:mod:`sift_worker.fetch`) and sends their
values with its progress reports (:class:`sift_worker.broker_client.BrokerProgress`);
the operator's broker exports them as ``sift_worker_<name>_total``, summed over the
workers (``operator/sift_operator/broker/worker_metrics.py``). Pure data, so the
operator imports it without the worker's HTTP stack.
"""

from __future__ import annotations

__all__ = ["WORKER_COUNTERS", "metric_name"]

# wire name (the key in a report) -> help text
WORKER_COUNTERS: dict[str, str] = {
    "egress_refused": "Requests refused by the in-process egress guard (host not on the allowlist)",
    "fetch_retries": "Requests retried after a transient failure",
    "fetch_failures": "Requests that failed after every retry",
    "url_refreshes": "Signed URLs re-signed before or after expiry",
}


def metric_name(name: str) -> str:
    """The Counter's name (prometheus_client appends ``_total`` when it exports it)."""
    return f"sift_worker_{name}"
