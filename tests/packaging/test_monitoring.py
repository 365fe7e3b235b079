"""The Grafana dashboard and the PrometheusRule use only metrics, labels and label
values the code really exports, and the rule has the monitoring.coreos.com/v1 shape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sift_operator.broker.metrics  # registers the broker metrics on the operator registry
import yaml
from prometheus_client import CollectorRegistry
from sift_operator import metrics as operator_metrics
from sift_worker import fetch

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
RULE = ROOT / "deploy" / "monitoring" / "prometheusrule.yaml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
ALWAYS = {"job", "instance", "namespace", "pod", "le"}  # added by Prometheus / histograms
KNOWN_VALUES = {
    "phase": set(operator_metrics.PHASES),
    "outcome": {*operator_metrics.OUTCOMES, "ok"},
    "endpoint": set(sift_operator.broker.metrics.ENDPOINTS),
    "reason": set(operator_metrics.REPORT_REASONS),
}


def _series(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Exported series name -> its label names, for every metric of ``registry``."""
    found: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):  # no public list of collectors
        describe = getattr(collector, "describe", None)
        for family in describe() if describe else collector.collect():
            labels = set(getattr(collector, "_labelnames", ()))
            for suffix in SUFFIXES[family.type]:
                found[family.name + suffix] = labels
    return found


OPERATOR_SERIES = _series(operator_metrics.REGISTRY)
SERIES = {**OPERATOR_SERIES, **_series(fetch.REGISTRY)}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for panel in panels:
            yield from (t["expr"] for t in panel.get("targets", ()))
            yield from walk(panel.get("panels", []))

    return [*walk(doc["panels"]), doc["templating"]["list"][1]["definition"]]


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULE.read_text())
    return [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"]]


def test_registries_hold_what_the_code_defines() -> None:
    assert "sift_operator_runs" in SERIES
    assert "sift_operator_run_outcomes_total" in SERIES
    assert "sift_operator_broker_requests_total" in SERIES
    assert "sift_worker_egress_refused_total" in SERIES
    assert SERIES["sift_operator_runs"] == {"phase"}


def test_the_operator_relays_every_worker_counter() -> None:
    """A worker is a batch Job nobody scrapes: what the dashboard and the rules read of it
    must come from the operator's registry (the counters workers report to the broker)."""
    worker = _series(fetch.REGISTRY)
    assert worker
    for name, labels in worker.items():
        assert OPERATOR_SERIES.get(name) == labels == set(), name
    used = {n for e in [*dashboard_exprs(), *rule_exprs()] for n in re.findall(r"sift_\w+", e)}
    assert {n for n in used if n.startswith("sift_worker_")} == set(worker)
    for expr in dashboard_exprs():  # the dashboard's job selector applies to them too
        for name in re.findall(r"\b(sift_worker_[a-z_]+)\b", expr):
            assert re.search(rf'{name}\{{job=~"\$job"\}}', expr), expr


@pytest.mark.parametrize(
    ("where", "exprs"), [("dashboard", dashboard_exprs()), ("rules", rule_exprs())]
)
def test_every_metric_label_and_value_exists(where: str, exprs: list[str]) -> None:
    used: set[str] = set()
    for expr in exprs:
        names = re.findall(r"\b(sift_[a-z0-9_]+)\b", expr)
        assert names, f"{where}: {expr!r} uses no Sift metric"
        for name in names:
            assert name in SERIES, f"{where}: {name} is not exported by the code ({expr!r})"
            used.add(name)
        for name, matchers in re.findall(r"\b(sift_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label, value in re.findall(r'(\w+)\s*[!=]~?\s*"([^"]*)"', matchers):
                assert label in SERIES[name] | ALWAYS, f"{where}: {name} has no label {label}"
                if label in KNOWN_VALUES and "$" not in value:
                    assert value in KNOWN_VALUES[label], f"{where}: {label}={value!r}"
        for grouped in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {x.strip() for x in grouped.split(",")}
            assert any(labels <= SERIES[n] | ALWAYS for n in names), f"{where}: by ({grouped})"
    if where == "dashboard":  # every metric the code exports is on the dashboard
        families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in SERIES}
        shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
        assert families == shown, f"not on the dashboard: {families - shown}"


def test_observability_doc_lists_every_exported_metric() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in SERIES}
    missing = sorted(n for n in families if f"`{n}`" not in doc)
    assert missing == [], f"docs/observability.md does not list {missing}"
    assert "not scraped" not in doc


def test_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "sift-operator"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": DURATION},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "labels": {
                                            "type": "object",
                                            "required": ["severity"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                        "annotations": {
                                            "type": "object",
                                            "required": ["summary"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def test_prometheus_rule_shape_and_required_alerts() -> None:
    doc = yaml.safe_load(RULE.read_text())
    jsonschema.validate(doc, RULE_SCHEMA)
    alerts = {r["alert"] for g in doc["spec"]["groups"] for r in g["rules"]}
    assert {"SiftRunsFailing", "SiftQueueWaitHigh", "SiftReconcileErrors"} <= alerts
    assert {"SiftBrokerFailing", "SiftReportingStuck", "SiftReportsRejected"} <= alerts
    assert "SiftWorkerEgressRefused" in alerts
    for expr in rule_exprs():
        assert expr.count("(") == expr.count(")"), expr
