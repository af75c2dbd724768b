"""The Grafana dashboard the chart ships: valid JSON, loaded by the sidecar's label, showing the views people
expect, and every PromQL expression naming only metrics that the proxy or the operator really export (read
from their own /metrics renderers, not from a list kept by hand)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from sipoperator.metrics import Metrics
from sipproxy.shared.counters import SocketCounters
from sipproxy.supervisor.metrics import render_prometheus
from tests.unit.chart.rendering import CHART, rendered

DASHBOARD = CHART / "files" / "dashboards" / "sipsockets.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}  # fmt: skip


def exported(text: str) -> set[str]:
    """Series names a Prometheus text exposition offers, by its # TYPE lines (with the histogram and summary
    series)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {f"{name}_sum", f"{name}_count"}
    return names


def proxy_metrics() -> set[str]:
    counters = SocketCounters(1, 2, 3, 4, {"parse_error": 1}, fwd_invites=1)
    text = render_prometheus({"udp:127.0.0.1:5060": counters}, 1, 0, 0.1, 0, {"listening": 1, "failed": 0})
    return exported(text)


def operator_metrics() -> set[str]:
    metrics = Metrics()
    metrics.conditions_source = lambda: {("Ready", "True", "Listening"): 1}
    return exported(metrics.render())


def expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither functions, keywords, label
    names (in {...}, by (...), without (...)) nor inside strings, ranges or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, e.g. label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, e.g. [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not 5m, 1e3
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (pod) (rate(sipproxy_reload_duration_seconds_sum{namespace=~"$namespace"}[$__rate_interval]))'
        ' / on (pod) group_left sum without (le) (x_total{a="b:c"} offset 5m) > bool 0'
    )
    assert metric_names(expr) == {"sipproxy_reload_duration_seconds_sum", "x_total"}


def test_the_dashboard_is_valid_json_with_panels_and_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "sipsockets" and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}


def test_every_expression_names_only_metrics_the_proxy_or_the_operator_export() -> None:
    known = proxy_metrics() | operator_metrics()
    exprs = list(expressions(json.loads(DASHBOARD.read_text())))
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{expr}: {sorted(names - known)} exported by neither"
        used |= names
    # The views people expect: calls per second, drops by reason, reloads and their latency per pod, sockets
    # per state.
    assert {
        "sipproxy_forwarded_invites_total",
        "sipproxy_dropped_packets_total",
        "sipproxy_reloads_total",
        "sipproxy_reload_duration_seconds_sum",
        "sipproxy_reload_duration_seconds_count",
        "sipsockets_sockets",
    } <= used
    by_title = {p["title"]: list(expressions(p)) for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert any("by (reason)" in e for e in by_title["Drops by reason"])
    assert "by (pod)" in by_title["Reload latency per pod"][0]


def test_the_chart_ships_it_for_the_grafana_sidecar_when_enabled() -> None:
    assert not [c for c in rendered().of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboards")]
    r = rendered({"dashboards": {"enabled": True, "annotations": {"grafana_folder": "SIP"}}})
    cm = r.one("ConfigMap", "-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "SIP"}
    assert cm["metadata"]["namespace"] == "voip"
    assert json.loads(cm["data"]["sipsockets.json"]) == json.loads(DASHBOARD.read_text())
    other = rendered({"dashboards": {"enabled": True, "namespace": "monitoring", "labels": {"dash": "yes"}}})
    cm = other.one("ConfigMap", "-dashboards")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["dash"] == "yes"
