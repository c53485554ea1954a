"""Monitoring: log groups with retention, metric filters, the dashboard and alarms."""

from __future__ import annotations

import json

from tests.support.pulumi_harness import stack_graph
from warmstart import metrics, naming

LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"


def test_log_groups_have_retention() -> None:
    for env, days in (("dev", 7), ("prod", 90)):
        groups = {r.inputs["name"]: r.inputs for r in stack_graph(env).of_type(LOG_GROUP)}
        assert set(groups) == {naming.replica_log_group(env, "chat"), naming.gate_log_group(env, "chat")}
        assert {g["retentionInDays"] for g in groups.values()} == {days}


def test_request_metrics_come_from_the_gate_log() -> None:
    g = stack_graph("prod")
    filters = {r.inputs["metricTransformation"]["name"]: r.inputs for r in
               g.of_type("aws:cloudwatch/logMetricFilter:LogMetricFilter")}
    assert set(filters) == set(metrics.FROM_LOGS)
    for name, (unit, field) in metrics.FROM_LOGS.items():
        f = filters[name]
        assert f["logGroupName"] == naming.gate_log_group("prod", "chat")
        assert f["metricTransformation"]["value"] == f"$.{field}"
        assert f["metricTransformation"]["dimensions"] == {"Endpoint": "$.endpoint"}
        assert f["metricTransformation"]["unit"] == unit


def test_dashboard_shows_every_metric() -> None:
    g = stack_graph("prod")
    d = g.one("aws:cloudwatch/dashboard:Dashboard").inputs
    assert d["dashboardName"] == "ws-prod-chat"
    body = json.loads(d["dashboardBody"])
    titles = {w["properties"]["title"] for w in body["widgets"]}
    assert titles == {"Latency (ms)", "Time to first token (ms)", "In flight", "Queue wait (ms)", "Replicas",
                      "Requests and rejections", "Output tokens / s", "Estimated cost per hour"}
    shown = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"]
             if isinstance(m[0], str) and m[0] == metrics.NAMESPACE}
    assert shown == set(metrics.PUBLISHED) | set(metrics.FROM_LOGS)
    latency = next(w for w in body["widgets"] if w["properties"]["title"] == "Latency (ms)")
    assert [m[4]["stat"] for m in latency["properties"]["metrics"]] == ["p50", "p99"]
    cost = next(w for w in body["widgets"] if w["properties"]["title"] == "Estimated cost per hour")
    assert any("expression" in m[0] and "1.861" in m[0]["expression"] for m in cost["properties"]["metrics"]
               if isinstance(m[0], dict))
    assert g.outputs["dashboard_url"]["value"].endswith("#dashboards:name=ws-prod-chat")


def test_alarms_notify_on_call() -> None:
    g = stack_graph("prod")
    topic = g.one("aws:sns/topic:Topic")
    sub = g.one("aws:sns/topicSubscription:TopicSubscription").inputs
    assert sub["protocol"] == "email" and sub["endpoint"] == "oncall@example.com"
    alarms = {r.name.removeprefix("chat-mon-"): r.inputs for r in g.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
              if r.parent == "chat-mon"}
    assert set(alarms) == {"rejected-503", "latency-p99", "no-capacity", "gates-down"}
    assert all(a["alarmActions"] == [topic.outputs["arn"]] for a in alarms.values())
    assert alarms["gates-down"]["threshold"] == 2
    assert alarms["latency-p99"]["extendedStatistic"] == "p99"
    # dev has no address: alarms exist but notify nobody
    assert not any(r.inputs.get("alarmActions") for r in stack_graph("dev").of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
                   if r.parent == "chat-mon")


def _access_log_fields() -> set[str]:
    """Keyword names of the gate's access_log.emit(...) call: the fields of its JSON access line."""
    import ast
    from pathlib import Path

    import runtime.gate.app as app

    tree = ast.parse(Path(app.__file__).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "emit" and isinstance(n.func.value, ast.Name) and n.func.value.id == "access_log"]
    assert calls, "runtime/gate/app.py no longer calls access_log.emit"
    return {kw.arg for c in calls for kw in c.keywords if kw.arg}


def test_metric_filters_read_fields_the_gate_writes() -> None:
    fields = _access_log_fields()
    assert metrics.ACCESS_LOG_ID_FIELD in fields
    for _, field in metrics.FROM_LOGS.values():
        assert field in fields, field



def test_gate_access_line_names_its_endpoint() -> None:
    assert metrics.ACCESS_LOG_ENDPOINT_FIELD in _access_log_fields()
