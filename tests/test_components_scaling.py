"""Scaling: target tracking on InFlightPerReplica (= ceil(in_flight / target)), Flex's idle rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.scaling import Scaling, ScalingArgs, idle_periods
from warmstart import metrics
from warmstart.testing.pulumi_harness import Recorder, render_values, stack_graph, with_endpoint

POLICY = "aws:autoscaling/policy:Policy"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_target_tracking_on_in_flight_per_replica(env: str) -> None:
    g = stack_graph(env)
    p = g.one(POLICY, "scaling-inflight").inputs
    assert p["policyType"] == "TargetTrackingScaling"
    assert p["autoscalingGroupName"] == f"ws-{env}-chat-replicas"
    cfg = p["targetTrackingConfiguration"]
    assert cfg["targetValue"] == 30.0  # the variant's target_concurrency
    spec = cfg["customizedMetricSpecification"]
    assert spec["metricName"] == "InFlightPerReplica" == metrics.INFLIGHT_PER_REPLICA
    assert spec["metricName"] in metrics.PUBLISHED
    assert spec["namespace"] == metrics.NAMESPACE
    assert spec["metricDimensions"] == [{"name": "Endpoint", "value": "chat"}]


def test_replica_cap_overrides_the_target() -> None:
    g = render_values(with_endpoint("dev", replica_cap=12))
    assert g.one(POLICY, "scaling-inflight").inputs["targetTrackingConfiguration"]["targetValue"] == 12.0


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_flex_scales_to_zero_after_idle_timeout(env: str) -> None:
    g = stack_graph(env)
    to_zero = g.one(POLICY, "idle-to-zero")
    assert to_zero.inputs["policyType"] == "StepScaling" and to_zero.inputs["adjustmentType"] == "ExactCapacity"
    assert to_zero.inputs["stepAdjustments"] == [{"scalingAdjustment": 0, "metricIntervalUpperBound": "0"}]
    alarm = g.one(ALARM, "scaling-idle").inputs
    assert alarm["metricName"] == "Requests" and alarm["statistic"] == "Sum" and alarm["period"] == 60
    assert alarm["evaluationPeriods"] == alarm["datapointsToAlarm"] == 5  # idle_timeout_s 300
    assert (alarm["comparisonOperator"], alarm["threshold"]) == ("LessThanThreshold", 1)
    assert alarm["treatMissingData"] == "breaching"
    assert alarm["alarmActions"] == [to_zero.outputs["arn"]]


def test_active_never_goes_below_min() -> None:
    g = stack_graph("prod")
    assert [p.name for p in g.of_type(POLICY)] == ["chat-scaling-inflight"]
    assert [a for a in g.of_type(ALARM) if a.name.endswith("scaling-idle")] == []
    assert g.one("aws:autoscaling/group:Group", "replicas-asg").inputs["minSize"] >= 1


def test_idle_timeout_in_minutes(pulumi_record: Recorder) -> None:
    g = pulumi_record(lambda: Scaling("s", ScalingArgs(endpoint="e", asg_name="a", mode="flex", target_per_replica=8,
                                                       idle_timeout_s=61, stopped=False, tags={})))
    assert g.one(ALARM).inputs["evaluationPeriods"] == 2


@given(st.integers(min_value=1, max_value=86400))
def test_idle_periods_cover_the_timeout(seconds: int) -> None:
    n = idle_periods(seconds)
    assert n * 60 >= seconds and (n - 1) * 60 < max(seconds, 60)
