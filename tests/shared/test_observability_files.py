"""The example dashboard and alert rules only name metrics that cronbus exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import cronbus.shared.metrics  # noqa: F401  (registers the metrics)

ROOT = Path(__file__).resolve().parents[2] / "deploy"
# Litestar's middleware defines the API's request metrics when an app is built.
API_METRICS = {"cronbus_api_request_duration_seconds"}


def exported() -> set[str]:
    """Every sample name the process registry can produce (labelled metrics have no samples
    until a label value is used, so names come from the family and its type)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names = {name + suffix for name in API_METRICS for suffix in ("_bucket", "_count", "_sum")}
    names |= {"cronbus_api_requests_total", "cronbus_spans_total"}
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def named_in(expressions: list[str]) -> set[str]:
    found = set()
    for expr in expressions:
        found.update(re.findall(r"\b(cronbus_[a-z_]+)", expr))
    return found


def test_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "grafana" / "cronbus-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = named_in(exprs)
    assert names and names <= exported(), names - exported()


def test_alert_rules_name_exported_metrics_and_cover_the_issue_list() -> None:
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    assert {
        "CronbusLeaderMissing",
        "CronbusDispatchLate",
        "CronbusProjectionLagGrowing",
        "CronbusRunnerPoolEmpty",
    } <= alerts
    names = named_in([r["expr"] for r in rules])
    assert names <= exported(), names - exported()
