"""Monitoring: log groups with retention, metric filters, the dashboard and alarms."""

from __future__ import annotations

import json

from components.monitoring import NO_CAPACITY_EXPRESSION
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


def test_alarm_topic_key_lets_cloudwatch_publish() -> None:
    """Alarm notifications to an SSE-KMS topic arrive only if the key policy allows
    cloudwatch.amazonaws.com kms:GenerateDataKey* and kms:Decrypt; alias/aws/sns (AWS-managed, its
    policy not editable) does not, so its alarms would never be delivered."""
    g = stack_graph("prod")
    topic = g.one("aws:sns/topic:Topic").inputs
    key = g.one("aws:kms/key:Key")
    assert topic["kmsMasterKeyId"] == key.outputs["arn"] != "alias/aws/sns"
    assert key.inputs["enableKeyRotation"] is True
    policy = json.loads(key.inputs["policy"])
    (cw,) = [s for s in policy["Statement"] if s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"]
    assert set(cw["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"} and cw["Effect"] == "Allow"
    assert cw["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}
    admin = [s for s in policy["Statement"] if s.get("Principal", {}).get("AWS") == "arn:aws:iam::123456789012:root"]
    assert admin  # the account keeps control of its key (else it becomes unmanageable)
    assert stack_graph("dev").of_type("aws:kms/key:Key") == []  # no address, no topic, no key


def test_no_capacity_alarm_reads_waiting_requests() -> None:
    """A request held for capacity holds no lease, so InFlight is 0 whenever no replica is ready:
    the alarm reads Waiting (the gate's held requests) against ReadyReplicas."""
    g = stack_graph("prod")
    (alarm,) = [r for r in g.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") if r.name.endswith("no-capacity")]
    queries = {q["id"]: q for q in alarm.inputs["metricQueries"]}
    assert queries["waiting"]["metric"]["metricName"] == metrics.WAITING
    assert queries["ready"]["metric"]["metricName"] == "ReadyReplicas"
    assert queries["stuck"]["expression"] == NO_CAPACITY_EXPRESSION and queries["stuck"]["returnData"] is True
    assert "InFlight" not in json.dumps(alarm.inputs["metricQueries"])
    assert "FILL(waiting, 0) > 0" in NO_CAPACITY_EXPRESSION and "FILL(ready, 0) == 0" in NO_CAPACITY_EXPRESSION
