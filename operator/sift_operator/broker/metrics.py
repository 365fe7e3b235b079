"""The broker's metrics, on the operator's registry; bounded labels (no run, no key)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
