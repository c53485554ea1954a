"""Scaling: target tracking on InFlightPerReplica (= ceil(in_flight / target)), Flex's idle rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.scaling import Scaling, ScalingArgs, idle_periods
from tests.support.pulumi_harness import Recorder, render_values, stack_graph, with_endpoint
from warmstart import metrics

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
    assert alarm["evaluationPeriods"] == alarm["datapointsToAlarm"] == 5  # idle_timeout_s 300
    assert (alarm["comparisonOperator"], alarm["threshold"]) == ("LessThanThreshold", 1)
    assert alarm["treatMissingData"] == "breaching"  # no gate publishing: nobody can be calling
    assert alarm["alarmActions"] == [to_zero.outputs["arn"]]
    queries = {q["id"]: q for q in alarm["metricQueries"]}
    assert [q["id"] for q in alarm["metricQueries"] if q["returnData"]] == ["idle"]
    read = {(q["metric"]["metricName"], q["metric"]["stat"]) for q in queries.values() if "metric" in q}
    assert read == {("Requests", "Sum"), ("InFlight", "Maximum"), ("Waiting", "Maximum")}
    for q in queries.values():
        if "metric" in q:
            m = q["metric"]
            # a unit other than the one the gate publishes with would read no data: "idle"
            assert m["unit"] == metrics.PUBLISHED[m["metricName"]][0] and m["period"] == 60
            assert (m["namespace"], m["dimensions"]) == (metrics.NAMESPACE, {"Endpoint": "chat"})


# --- the idle rule over minute-by-minute gate data ------------------------------------------------
# A minute's datapoint per metric (None: the gate published nothing that minute).
Minutes = list[dict[str, float | None]]


class _Series(list[float | None]):
    """A metric math time series: arithmetic is missing where either side is (as in CloudWatch)."""

    def __add__(self, other: object) -> _Series:  # type: ignore[override]
        assert isinstance(other, _Series)
        return _Series(None if a is None or b is None else a + b for a, b in zip(self, other, strict=True))


def _fill(s: _Series, value: float) -> _Series:
    return _Series(value if v is None else v for v in s)


def _alarm_series(alarm: dict[str, object], minutes: Minutes) -> _Series:
    """What the alarm compares with its threshold, minute by minute."""
    if "metricQueries" not in alarm:  # a plain single-metric alarm
        return _Series(m.get(str(alarm["metricName"])) for m in minutes)
    queries: list[dict[str, object]] = alarm["metricQueries"]  # type: ignore[assignment]
    ns: dict[str, object] = {"FILL": _fill}
    for q in queries:
        if "metric" in q:
            name = str(q["metric"]["metricName"])  # type: ignore[index]
            ns[str(q["id"])] = _Series(m.get(name) for m in minutes)
    (returned,) = [q for q in queries if q["returnData"]]
    # the expressions the component writes use only FILL, + and metric ids
    return eval(str(returned["expression"]), {"__builtins__": {}}, ns)


def _fires(alarm: dict[str, object], minutes: Minutes) -> bool:
    """Whether `periods` consecutive minutes breach (missing data per treatMissingData)."""
    assert alarm["comparisonOperator"] == "LessThanThreshold"
    missing_breaches = alarm["treatMissingData"] == "breaching"
    breach = [missing_breaches if v is None else v < float(alarm["threshold"])  # type: ignore[arg-type]
              for v in _alarm_series(alarm, minutes)]
    n = int(alarm["evaluationPeriods"])  # type: ignore[call-overload]
    return any(all(breach[i:i + n]) for i in range(len(breach) - n + 1))


def _minutes(requests: list[float | None], in_flight: list[float | None],
             waiting: list[float | None] | None = None) -> Minutes:
    waits = waiting if waiting is not None else [0.0] * len(requests)
    return [{"Requests": r, "InFlight": f, "Waiting": w} for r, f, w in zip(requests, in_flight, waits, strict=True)]


def _alarm_states(alarm: dict[str, object], minutes: Minutes) -> list[bool]:
    """Whether the alarm is in ALARM after each minute (it looks back evaluationPeriods minutes)."""
    n = int(alarm["evaluationPeriods"])  # type: ignore[call-overload]
    return [i + 1 >= n and _fires(alarm, minutes[i + 1 - n:i + 1]) for i in range(len(minutes))]


def test_a_cold_start_with_held_requests_never_alarms() -> None:
    alarm = stack_graph("dev").one(ALARM, "scaling-idle").inputs
    # Flex at zero for 10 idle minutes (the alarm is in ALARM), then callers arrive: the gate
    # wakes the group and holds them through a 6-minute cold start (not admitted: no InFlight;
    # not answered: no Requests), then they are answered and the endpoint serves.
    idle, cold, serving = 10, 6, 3
    minutes = _minutes([0] * idle + [0] * cold + [4] * serving,
                       [0] * idle + [0] * cold + [2] * serving,
                       [0] * idle + [3] * cold + [0] * serving)
    states = _alarm_states(alarm, minutes)
    assert states[idle - 1]  # idle before: in ALARM, its policy keeps the group at 0
    # from the wake's minute on, no evaluation finds the endpoint idle: the starting replica stays
    assert not any(states[idle:])
    # only the held demand keeps it up: the same minutes without it look idle
    assert _fires(alarm, [{**m, "Waiting": 0.0} for m in minutes[idle:idle + cold]])


def test_a_stream_longer_than_the_idle_timeout_keeps_its_replica() -> None:
    alarm = stack_graph("dev").one(ALARM, "scaling-idle").inputs
    # one request at minute 0 streams for 12 minutes: no new request after the first minute
    stream = _minutes([1] + [0] * 11 + [0] * 6, [1] * 12 + [0] * 6)
    assert not _fires(alarm, stream[:12])
    # ... and once it has finished, 5 idle minutes scale the endpoint to zero
    assert _fires(alarm, stream)
    # a minute in which the gate's Requests datapoint went missing does not hide the stream
    gap = _minutes([1, None, None, None, None, None, 0], [1] * 7)
    assert not _fires(alarm, gap)
    # no gate publishing at all: nobody is calling
    assert _fires(alarm, _minutes([None] * 5, [None] * 5))
    # steady traffic never idles
    assert not _fires(alarm, _minutes([3] * 20, [0] * 20))


def test_active_never_goes_below_min() -> None:
    g = stack_graph("prod")
    replicas = g.one("aws:autoscaling/group:Group", "replicas-asg").outputs["name"]
    assert [p.name for p in g.of_type(POLICY) if p.inputs["autoscalingGroupName"] == replicas] == [
        "chat-scaling-inflight"]
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
