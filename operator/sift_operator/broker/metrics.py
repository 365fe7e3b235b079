"""The broker's metrics, on the operator's registry; bounded labels (no run, no key).

``WORKER_COUNTERS``: the workers' own counters as they report them with their progress
(``worker_metrics.py``), under the worker's names: the operator relays them the way a
Pushgateway would, summed over every run it served, with no label per run.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from sift_worker.metric_names import WORKER_COUNTERS as WORKER_COUNTER_HELP
from sift_worker.metric_names import metric_name

from sift_operator.metrics import REGISTRY

ENDPOINTS = (
    "inputs",
    "inputs_sign",
    "uploads_sign",
    "outputs_sign",
    "uploads_post",
    "hosts",
    "progress",
)

REQUESTS = Counter(
    "sift_operator_broker_requests",
    "Broker requests by endpoint and outcome (an error kind, or ok).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "sift_operator_broker_request_duration_seconds",
    "Time to answer one broker request.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
TOKEN_REVIEWS = Counter(
    "sift_operator_broker_token_reviews",
    "TokenReviews sent (cache misses) by result.",
    ["result"],
    registry=REGISTRY,
)
WORKER_COUNTERS = {
    name: Counter(
        metric_name(name),
        f"{doc}; summed over the workers, as they report them to the broker.",
        registry=REGISTRY,
    )
    for name, doc in WORKER_COUNTER_HELP.items()
}
