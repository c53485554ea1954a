"""The ASG replica pool against moto's server over HTTP: discovery, wake, scale-out, idle-down,
metrics and the capacity fallback."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from runtime.gate.config import GateConfig
from runtime.pool.aws import AwsPool, replica_phase
from runtime.scaling import asg as asgops
from runtime.scaling.coordination import MemoryCoordinator, RedisCoordinator
from tests.support.fleet import Fleet
from warmstart import metrics


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def gate_config(fleet: Fleet, *, min_replicas: int = 0, max_replicas: int = 4, store: str = "memory") -> GateConfig:
    return GateConfig.parse({
        "endpoint": fleet.endpoint, "served_name": "llama-3.1-8b-instruct", "plan": "team",
        "replica_cap": 30, "store": store,
        "pool": {
            "kind": "aws", "asg_name": fleet.asg_name, "region": fleet.region,
            "variant": "llama31-8b-fp8-l4", "min_replicas": min_replicas,
            "max_replicas": max_replicas, "idle_timeout_s": 300,
        },
    })


def counting_session(*operations: str) -> tuple[boto3.Session, dict[str, int]]:
    """A session whose clients count the named API calls (the calls still go to moto)."""
    session = boto3.Session()
    counts = dict.fromkeys(operations, 0)
    lock = threading.Lock()

    def make(op: str) -> Any:
        def count(**_: Any) -> None:
            with lock:
                counts[op] += 1
        return count

    for op in operations:
        service = "ec2" if op == "DescribeInstances" else "auto-scaling"
        session.events.register(f"before-call.{service}.{op}", make(op))
    return session, counts


def pool_for(fleet: Fleet, clock: Clock | None = None, **kw: Any) -> AwsPool:
    clock = clock or Clock()
    kw.setdefault("coordinator", MemoryCoordinator(clock=clock))
    return AwsPool(gate_config(fleet, **{k: kw.pop(k) for k in ("min_replicas", "store") if k in kw}),
                   clock=clock, wall=clock, background=False, **kw)


def test_wake_from_zero_discovers_the_new_replica(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock)
    snap = pool.snapshot()
    assert snap.ready == () and snap.starting == 0 and not snap.stopped

    pool.wake()
    assert fleet.group()["DesiredCapacity"] == 1
    assert pool.snapshot().starting == 1  # the gate holds requests: capacity is on its way

    clock.t += 5  # past the discovery TTL
    ready = pool.snapshot().ready
    assert len(ready) == 1
    inst = fleet.client("ec2").describe_instances(InstanceIds=[ready[0].id])["Reservations"][0]["Instances"][0]
    assert ready[0].url == f"http://{inst['PrivateIpAddress']}:8000"
    assert ready[0].cap == 30


def test_twenty_concurrent_wakes_make_one_scale_up(fleet: Fleet) -> None:
    session, counts = counting_session("SetDesiredCapacity")
    pool = pool_for(fleet, session=session)
    barrier = threading.Barrier(20)

    def wake() -> None:
        barrier.wait()
        pool.wake()

    threads = [threading.Thread(target=wake) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts["SetDesiredCapacity"] == 1
    assert fleet.group()["DesiredCapacity"] == 1


def test_twenty_wakes_across_gates_sharing_redis_make_one_scale_up(fleet: Fleet, redis_url: str) -> None:
    session, counts = counting_session("SetDesiredCapacity")
    # Five gates (pools), each with its own cache, four concurrent wakers each: only Redis connects them.
    pools = [
        pool_for(fleet, session=session, coordinator=RedisCoordinator(redis_url, fleet.endpoint))
        for _ in range(5)
    ]
    barrier = threading.Barrier(20)

    def wake(p: AwsPool) -> None:
        barrier.wait()
        p.wake()

    threads = [threading.Thread(target=wake, args=(pools[i % 5],)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts["SetDesiredCapacity"] == 1
    assert fleet.group()["DesiredCapacity"] == 1


def test_scale_out_follows_ceil_of_in_flight_over_target_clamped(fleet: Fleet) -> None:
    pool = pool_for(fleet)
    pool.snapshot()
    pool.report_demand(61)  # ceil(61 / 30) = 3
    assert fleet.group()["DesiredCapacity"] == 3
    pool.report_demand(20)  # fewer needed: scale-out never lowers capacity
    assert fleet.group()["DesiredCapacity"] == 3
    pool.report_demand(500)  # ceil(500 / 30) = 17, clamped to max 4
    assert fleet.group()["DesiredCapacity"] == 4


def test_flex_goes_to_zero_only_after_idle_timeout(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock)
    pool.wake()
    assert fleet.group()["DesiredCapacity"] == 1
    clock.t += 299
    assert pool.controller.tick() is None  # the wake's demand is 299 s old: still inside the window
    assert fleet.group()["DesiredCapacity"] == 1
    clock.t += 20  # one tick interval (15 s) later: the window holds no request any more
    decision = pool.controller.tick()
    assert decision is not None and decision.desired == 0
    assert fleet.group()["DesiredCapacity"] == 0


def test_requests_keep_a_flex_endpoint_up_until_a_whole_idle_window(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock)
    pool.report_demand(90)
    assert fleet.group()["DesiredCapacity"] == 3
    for _ in range(10):  # ten minutes with traffic: never to zero (partial scale-in is target tracking's)
        clock.t += 60
        pool.report_demand(25)
        assert pool.controller.tick() is None
    assert fleet.group()["DesiredCapacity"] == 3
    for _ in range(5):  # five quiet minutes (the gate still reports, with nothing in flight)
        clock.t += 60
        pool.report_demand(0)
        assert pool.controller.tick() is None
    clock.t += 20
    decision = pool.controller.tick()
    assert decision is not None and decision.desired == 0


def test_a_long_stream_keeps_a_flex_endpoint_up(fleet: Fleet) -> None:
    from runtime.gate import metrics as gate_metrics

    clock = Clock()
    pool = pool_for(fleet, clock, metrics_interval_s=3600)
    pool.report_demand(1)  # one request admitted, then no admission for a long time
    assert fleet.group()["DesiredCapacity"] == 1
    gate_metrics.IN_FLIGHT.inc()  # its stream holds a lease in this gate process
    try:
        for _ in range(40):  # 40 x 20 s: far past idle_timeout
            clock.t += 20
            pool.step()
        assert fleet.group()["DesiredCapacity"] == 1
    finally:
        gate_metrics.IN_FLIGHT.dec()
    for _ in range(14):  # the stream ended: 280 s of quiet is not yet idle_timeout (300 s)
        clock.t += 20
        pool.step()
    assert fleet.group()["DesiredCapacity"] == 1
    for _ in range(3):
        clock.t += 20
        pool.step()
    assert fleet.group()["DesiredCapacity"] == 0


def test_active_never_goes_below_min_replicas(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock, min_replicas=2)
    pool.report_demand(100)
    assert fleet.group()["DesiredCapacity"] == 4
    for _ in range(3):
        clock.t += 3600
        assert pool.controller.tick() is None
    assert fleet.group()["DesiredCapacity"] == 4
    pool.wake()  # Active wakes to its floor, never to less
    assert fleet.group()["DesiredCapacity"] == 4


def test_active_wakes_to_its_floor(fleet: Fleet) -> None:
    pool = pool_for(fleet, min_replicas=2)
    pool.wake()
    assert fleet.group()["DesiredCapacity"] == 2


def test_discovery_is_cached_not_one_ec2_call_per_request(fleet: Fleet) -> None:
    session, counts = counting_session("DescribeInstances", "DescribeAutoScalingGroups")
    fleet.client("autoscaling").set_desired_capacity(AutoScalingGroupName=fleet.asg_name, DesiredCapacity=2)
    clock = Clock()
    pool = pool_for(fleet, clock, session=session)
    for _ in range(200):
        assert len(pool.snapshot().ready) == 2
    assert counts == {"DescribeInstances": 1, "DescribeAutoScalingGroups": 1}
    clock.t += 2.5
    for _ in range(200):
        pool.snapshot()
    assert counts == {"DescribeInstances": 2, "DescribeAutoScalingGroups": 2}


def test_background_refresh_finds_replicas_off_the_request_path(fleet: Fleet) -> None:
    import time

    pool = AwsPool(gate_config(fleet), discovery_ttl_s=0.2, metrics_interval_s=3600, tick_interval_s=3600)
    try:
        fleet.client("autoscaling").set_desired_capacity(AutoScalingGroupName=fleet.asg_name, DesiredCapacity=1)
        deadline = time.monotonic() + 20
        while not pool.snapshot().ready and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.snapshot().ready) == 1
    finally:
        pool.close()


def test_stopped_group_is_reported_and_never_woken(fleet: Fleet) -> None:
    asgops.set_group_tag(fleet.client("autoscaling"), fleet.asg_name, asgops.STOPPED_TAG, "true")
    pool = pool_for(fleet)
    assert pool.snapshot().stopped
    pool.wake()
    pool.report_demand(100)
    assert fleet.group()["DesiredCapacity"] == 0


def test_gate_metrics_published_to_cloudwatch(fleet: Fleet) -> None:
    from runtime.gate import metrics as gate_metrics
    from warmstart import metrics

    fleet.client("autoscaling").set_desired_capacity(AutoScalingGroupName=fleet.asg_name, DesiredCapacity=2)
    pool = pool_for(fleet)
    pool.snapshot()
    pool.metric_data()  # baseline: counts since the last publish start here
    for status in ("200", "200", "429"):
        gate_metrics.REQUESTS.labels("chat", status).inc()
    gate_metrics.REJECTIONS.labels("429", "budget").inc()
    pool.observe_in_flight(45)
    pool.observe_in_flight(10)  # InFlight is the peak since the last publish
    data = pool.metric_data()
    values = {d["MetricName"]: d["Value"] for d in data}
    assert values == {"InFlight": 45.0, "InFlightPerReplica": 22.5, "ReadyReplicas": 2.0,
                      "Requests": 3.0, "Rejected429": 1.0, "Rejected503": 0.0, "Waiting": 0.0}
    assert set(values) == set(metrics.PUBLISHED)

    pool.observe_in_flight(0)
    pool.publish_metrics()
    cw = fleet.client("cloudwatch")
    listed = cw.list_metrics(Namespace=metrics.NAMESPACE)["Metrics"]
    assert {m["MetricName"] for m in listed} == set(metrics.PUBLISHED)
    assert all(m["Dimensions"] == [{"Name": "Endpoint", "Value": "chat"}] for m in listed)


def test_waiting_requests_are_published_and_a_wake_publishes_at_once(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock)

    def waiting() -> float:
        (value,) = [d["Value"] for d in pool.metric_data() if d["MetricName"] == "Waiting"]
        return float(value)

    assert waiting() == 0.0  # published as zero when nobody waits: the idle alarm reads it
    pool.report_waiting(3)
    pool.report_waiting(1)
    assert waiting() == 3.0  # the minute's peak
    assert waiting() == 1.0  # still held (re-reported recently): the next minute counts it too
    clock.t += 60  # nobody re-reported: those requests were admitted, refused or gone
    assert waiting() == 1.0  # ... some time in that minute, at whose start one still waited
    assert waiting() == 0.0

    cw = fleet.client("cloudwatch")

    def published() -> int:
        stats = cw.get_metric_statistics(
            Namespace=metrics.NAMESPACE, MetricName="Waiting", Dimensions=[{"Name": "Endpoint", "Value": "chat"}],
            StartTime=datetime.now(UTC) - timedelta(hours=1), EndTime=datetime.now(UTC) + timedelta(hours=1),
            Period=60, Statistics=["SampleCount"])
        return int(sum(p["SampleCount"] for p in stats["Datapoints"]))

    pool.step()  # the first step publishes
    clock.t += 1
    pool.step()
    assert published() == 1  # the next publish is a minute away ...
    pool.report_waiting(1)
    pool.wake()  # ... unless the gate wakes the group: then at the next step
    clock.t += 1
    pool.step()
    assert published() == 2
    assert fleet.group()["DesiredCapacity"] == 1


def test_in_flight_falls_to_zero_once_the_gate_stops_reporting(fleet: Fleet) -> None:
    clock = Clock()
    pool = pool_for(fleet, clock)

    def in_flight() -> float:
        (value,) = [d["Value"] for d in pool.metric_data() if d["MetricName"] == "InFlight"]
        return float(value)

    pool.observe_in_flight(5)
    assert in_flight() == 5.0
    assert in_flight() == 5.0  # reported moments ago: still in flight
    clock.t += 60  # no admission reported since, and this process holds no lease
    assert in_flight() == 5.0  # the minute that ends started with 5 in flight ...
    assert in_flight() == 0.0  # ... the next one is idle, so the Flex idle alarm can fire


def test_capacity_failure_switches_to_the_variants_fallback_type(fleet: Fleet, aws_calls: Any) -> None:
    # moto never fails a launch and returns no scaling activities; the failure AWS reports is supplied
    # at the HTTP boundary, in the shape DescribeScalingActivities returns it.
    aws_calls("autoscaling", "DescribeScalingActivities", {"Activities": [{
        "ActivityId": "a-1", "AutoScalingGroupName": fleet.asg_name, "Cause": "scale out",
        "StartTime": "2026-11-27T10:00:00Z", "StatusCode": "Failed", "Progress": 100,
        "Description": "Launching a new EC2 instance.  Status Reason: We currently do not have "
                       "sufficient g6.xlarge capacity in the Availability Zone you requested.",
        "StatusMessage": "We currently do not have sufficient g6.xlarge capacity in the Availability Zone "
                         "you requested (us-east-1a). InsufficientInstanceCapacity",
    }]})
    pool = pool_for(fleet, session=boto3.DEFAULT_SESSION)
    assert pool.check_capacity() == "g5.xlarge"
    assert pool.check_capacity() is None  # the same failed activity is handled once
    ec2 = fleet.client("ec2")
    latest = ec2.describe_launch_template_versions(LaunchTemplateId=fleet.launch_template_id,
                                                   Versions=["$Latest"])["LaunchTemplateVersions"][0]
    assert latest["VersionNumber"] == 2
    assert latest["LaunchTemplateData"]["InstanceType"] == "g5.xlarge"
    group = fleet.group()
    assert group["LaunchTemplate"]["Version"] == "2"
    assert asgops.group_tags(group)[asgops.FALLBACK_TAG] == "g6.xlarge->g5.xlarge"
    assert pool.snapshot().detail["capacity_fallback"] == "g6.xlarge->g5.xlarge"


def test_capacity_detection_ignores_recovered_and_unrelated_failures() -> None:
    fail = {"StatusCode": "Failed", "StartTime": "2026-11-27T10:00:00Z",
            "StatusMessage": "InsufficientInstanceCapacity"}
    ok = {"StatusCode": "Successful", "StartTime": "2026-11-27T10:05:00Z"}
    other = {"StatusCode": "Failed", "StartTime": "2026-11-27T10:06:00Z", "StatusMessage": "Invalid AMI"}
    assert asgops.capacity_failure([fail]) is fail
    assert asgops.capacity_failure([fail, ok]) is None
    assert asgops.capacity_failure([fail, other]) is None
    assert asgops.capacity_failure([]) is None


@pytest.mark.parametrize(
    ("state", "health", "tag", "phase"),
    [
        ("Pending", "Healthy", None, "launching"),
        ("Pending:Wait", "Healthy", "loading-weights", "loading weights"),
        ("Pending:Wait", "Healthy", "warming", "warming"),
        ("InService", "Healthy", None, "ready"),
        ("InService", "Healthy", "ready", "ready"),
        ("InService", "Unhealthy", "ready", "draining"),
        ("Terminating:Wait", "Healthy", "ready", "draining"),
        ("Warmed:Stopped", "Healthy", None, None),
    ],
)
def test_replica_phase_from_lifecycle_state_and_tag(state: str, health: str, tag: str | None,
                                                    phase: str | None) -> None:
    assert replica_phase(state, health, tag) == phase
