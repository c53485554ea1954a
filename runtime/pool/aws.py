"""The replica pool on an EC2 Auto Scaling group (the `aws` backend).

Discovery: the group's instances and their private addresses, refreshed by a background thread
every `discovery_ttl_s` (two AWS calls per refresh: DescribeAutoScalingGroups, DescribeInstances),
never on the request path; `snapshot()` answers from that cache.

Which instance takes traffic (the replica phase mechanism, shared with `warmstart endpoint status`):

    ASG lifecycle state            instance tag warmstart:phase      phase
    Pending, Pending:Wait/Proceed  (none) | loading-weights | warming launching | loading weights | warming
    InService + Healthy            (none) | ready                    ready  -> routed
    InService                      loading-weights | warming         that phase (vLLM restarting)
    Terminating*, Standby, ...     any                               draining (no new requests)
    Warmed:*                       any                               warm pool (not a replica yet)

The replica tags itself as it boots and completes the group's launch lifecycle hook only after
vLLM answers /health, so InService already implies "engine up"; the tag refines the
in-between phases for humans.

Scaling: `wake()` and `report_demand()` hand the numbers to runtime.scaling's controller (one
scale-up across all gates, through the Redis lock when the store is redis://); the background
thread also runs the idle controller's tick (Flex -> 0), publishes the gate's metrics
(warmstart.metrics.PUBLISHED: InFlight, InFlightPerReplica, ReadyReplicas, Requests, Waiting, ...) to
CloudWatch once a minute for the Scaling component's target tracking and idle alarm, and switches
to the variant's fallback instance types when launches fail for lack of capacity.
Pulumi ignores desired capacity, so none of this fights a later `pulumi up`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from redis.exceptions import RedisError

from runtime.gate.config import GateConfig
from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool, ReplicaState
from runtime.scaling import asg as asgops
from runtime.scaling.controller import ScalingController
from runtime.scaling.coordination import Coordinator, coordinator_for
from runtime.scaling.policy import Limits
from warmstart import metrics
from warmstart.errors import ConfigError
from warmstart.spec import load_variant

log = logging.getLogger("warmstart.pool.aws")

DEFAULT_ENGINE_PORT = 8000
# A held request re-reports every <= 0.25 s while it waits (the gate's hold loop); a report older
# than this is from requests that were since admitted, refused, or whose gate worker died.
WAITING_FRESH_S = 5.0

_PENDING = ("Pending", "Pending:Wait", "Pending:Proceed")
_DRAINING = (
    "Terminating", "Terminating:Wait", "Terminating:Proceed", "Detaching",
    "EnteringStandby", "Standby",
)
_PHASES: dict[str, ReplicaState] = {
    "loading-weights": "loading", "loading": "loading", "warming": "warming", "ready": "ready",
}


def _gate_counts() -> dict[str, float]:
    """This process's request and rejection totals from the gate's Prometheus counters."""
    try:
        from runtime.gate import metrics as gate_metrics
    except ImportError:  # the pool used outside the gate (tools, tests of the pool alone)
        return {}
    out = {"requests": 0.0, "429": 0.0, "503": 0.0}
    for family in gate_metrics.REQUESTS.collect():
        out["requests"] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    for family in gate_metrics.REJECTIONS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("status") in ("429", "503"):
                out[s.labels["status"]] += s.value
    return out


def _gate_in_flight() -> int:
    """Requests this gate process holds leases for (streams included), from the gate's gauge."""
    try:
        from runtime.gate import metrics as gate_metrics
    except ImportError:
        return 0
    return int(sum(s.value for family in gate_metrics.IN_FLIGHT.collect() for s in family.samples))


def replica_phase(lifecycle_state: str, health: str, phase_tag: str | None) -> str | None:
    """The phase a human sees (see the module docstring); None for warm-pool and gone instances."""
    if lifecycle_state.startswith("Warmed:") or lifecycle_state in ("Terminated", "Detached"):
        return None
    if lifecycle_state in _DRAINING or health == "Unhealthy":
        return "draining"
    tag = _PHASES.get(phase_tag or "")
    if lifecycle_state in _PENDING:
        return {"loading": "loading weights", "warming": "warming"}.get(tag or "", "launching")
    if lifecycle_state == "InService":
        return {"loading": "loading weights", "warming": "warming"}.get(tag or "", "ready")
    return "launching"


class AwsPool(ReplicaPool):
    kind = "aws"

    def __init__(
        self,
        config: GateConfig,
        *,
        session: boto3.Session | None = None,
        coordinator: Coordinator | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        discovery_ttl_s: float = 2.0,
        tick_interval_s: float = 15.0,
        metrics_interval_s: float = 60.0,
        background: bool = True,
    ) -> None:
        pool = config.pool
        if pool.kind != "aws" or not pool.asg_name:
            raise ValueError(f"AwsPool needs pool.kind='aws' with asg_name, got kind={pool.kind!r}")
        self.config = config
        self.asg_name = pool.asg_name
        session = session or boto3.Session()
        cfg = Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=3, read_timeout=10)
        region = pool.region
        self._asg = session.client("autoscaling", region_name=region, config=cfg)
        self._ec2 = session.client("ec2", region_name=region, config=cfg)
        self._cw = session.client("cloudwatch", region_name=region, config=cfg)
        self._clock = clock
        self._wall = wall
        self.discovery_ttl_s = discovery_ttl_s
        self.metrics_interval_s = metrics_interval_s
        self.tick_interval_s = tick_interval_s
        self.limits = Limits(
            min_replicas=pool.min_replicas, max_replicas=pool.max_replicas,
            target_per_replica=config.replica_cap, idle_timeout_s=pool.idle_timeout_s,
        )
        self.controller = ScalingController(
            self._asg, self.asg_name, self.limits,
            coordinator or coordinator_for(config.store, config.endpoint),
            wall=wall, tick_interval_s=tick_interval_s,
        )
        self._fallbacks: tuple[str, ...] = ()
        self._primary: str | None = None
        if pool.variant:
            try:
                variant = load_variant(pool.variant)
            except ConfigError as e:  # serve anyway; only the capacity fallback needs the variant
                log.warning("%s: no capacity fallback: %s", pool.asg_name, e)
            else:
                self._primary = variant.gpu.instance_type
                self._fallbacks = variant.gpu.fallback_instance_types
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._snap = PoolSnapshot(stopped=config.stopped)
        self._desired: int | None = None
        self._fetched_at: float | None = None
        self._in_flight = 0
        self._in_flight_at = float("-inf")
        self._peak_in_flight = 0
        self._waiting = 0
        self._waiting_at = float("-inf")
        self._peak_waiting = 0
        self._counted: dict[str, float] = {}
        self._handled_activity: str | None = None
        self._stop = threading.Event()
        self._next_tick = self._next_metrics = clock()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="aws-pool", daemon=True)
            self._thread.start()

    # -- ReplicaPool ------------------------------------------------------------------------------

    def snapshot(self) -> PoolSnapshot:
        if self._thread is None:
            # No background thread (tests, one-shot tools): refresh inline, at most once per TTL.
            fetched = self._fetched_at
            if fetched is None or self._clock() - fetched >= self.discovery_ttl_s:
                self.refresh()
        return self._snap

    def wake(self) -> None:
        if self._snap.stopped:
            return  # stopped by the operator: the gate answers 503 "stopped", never wakes it
        try:
            decision = self.controller.wake(self._desired)
        except (BotoCoreError, ClientError, RedisError) as e:
            log.warning("%s: wake failed (the next request retries): %s", self.asg_name, e)
            return
        if decision is not None:
            self._note_desired(decision.desired)
            # Publish on the next background step, not a minute later: the Flex idle alarm may
            # still be in ALARM (the endpoint sat at zero) and must see the held demand (Waiting)
            # before its policy sets the capacity back to 0 under the starting replica.
            self._next_metrics = self._clock()

    def report_waiting(self, waiting: int) -> None:
        with self._lock:
            self._waiting = max(int(waiting), 0)
            self._waiting_at = self._clock()
            self._peak_waiting = max(self._peak_waiting, self._waiting)

    def report_demand(self, in_flight: int) -> None:
        self.observe_in_flight(in_flight)
        if self._snap.stopped:
            return
        try:
            decision = self.controller.scale_out(self._in_flight, self._desired)
        except (BotoCoreError, ClientError, RedisError) as e:
            log.warning("%s: scale-out failed (the next report retries): %s", self.asg_name, e)
            return
        if decision is not None:
            self._note_desired(decision.desired)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # -- discovery --------------------------------------------------------------------------------

    def _note_desired(self, desired: int) -> None:
        with self._lock:
            self._desired = desired
            snap = self._snap
            missing = max(desired - len(snap.ready) - snap.starting, 0)
            self._snap = PoolSnapshot(
                ready=snap.ready, starting=snap.starting + missing, stopped=snap.stopped, detail=snap.detail
            )

    def refresh(self) -> PoolSnapshot:
        """Re-read the group and its instances (two AWS calls). Concurrent callers share one refresh."""
        if not self._refreshing.acquire(blocking=False):
            return self._snap
        try:
            snap, desired = self._discover()
            with self._lock:
                self._snap, self._desired = snap, desired
                self._fetched_at = self._clock()
            return snap
        finally:
            self._refreshing.release()

    def _discover(self) -> tuple[PoolSnapshot, int | None]:
        group = asgops.describe_group(self._asg, self.asg_name)
        if group is None:
            return PoolSnapshot(stopped=self.config.stopped, detail={"error": f"no group {self.asg_name}"}), None
        tags = asgops.group_tags(group)
        port = int(tags.get(asgops.PORT_TAG) or DEFAULT_ENGINE_PORT)
        members = [i for i in group.get("Instances", []) if not str(i["LifecycleState"]).startswith("Warmed:")]
        described = self._describe_instances([str(i["InstanceId"]) for i in members])
        ready: list[Replica] = []
        starting = 0
        for inst in members:
            iid = str(inst["InstanceId"])
            info = described.get(iid, {})
            phase = replica_phase(str(inst["LifecycleState"]), str(inst.get("HealthStatus", "")), info.get("phase"))
            if phase == "ready" and info.get("ip"):
                ready.append(Replica(id=iid, url=f"http://{info['ip']}:{port}", cap=self.config.replica_cap))
            elif phase in ("launching", "loading weights", "warming"):
                starting += 1
        desired = int(group.get("DesiredCapacity", 0))
        # Desired raised but instances not created yet: capacity is still on its way.
        starting += max(desired - len(members), 0)
        detail = {"desired": str(desired)}
        if tags.get(asgops.FALLBACK_TAG):
            detail["capacity_fallback"] = tags[asgops.FALLBACK_TAG]
        stopped = self.config.stopped or tags.get(asgops.STOPPED_TAG) == "true"
        return PoolSnapshot(ready=tuple(ready), starting=starting, stopped=stopped, detail=detail), desired

    def _describe_instances(self, ids: list[str]) -> dict[str, dict[str, str]]:
        if not ids:
            return {}
        out: dict[str, dict[str, str]] = {}
        pages = self._ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
        for page in pages:
            for res in page.get("Reservations", []):
                for inst in res.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    out[inst["InstanceId"]] = {
                        "ip": inst.get("PrivateIpAddress", ""),
                        "phase": tags.get(asgops.PHASE_TAG, ""),
                    }
        return out

    # -- metrics ----------------------------------------------------------------------------------

    def observe_in_flight(self, in_flight: int) -> None:
        with self._lock:
            self._in_flight = max(int(in_flight), 0)
            self._in_flight_at = self._clock()
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def metric_data(self) -> list[dict[str, Any]]:
        """The gate's published metrics (warmstart.metrics.PUBLISHED) since the last call.

        InFlight is the peak since the last publish (the Scaling component reads it as Maximum);
        Waiting likewise, of the requests held for capacity (a cold start's callers: neither in
        flight nor finished, yet demand the idle alarm must see);
        Requests and rejections are this process's counts since then (CloudWatch sums the gates
        and workers). A zero Requests datapoint is published when idle on purpose: the Flex idle
        alarm reads it.
        """
        with self._lock:
            peak = self._peak_in_flight
            if self._clock() - self._in_flight_at >= WAITING_FRESH_S:
                # The gate reports in-flight only when it admits, so a quiet gate's last report
                # would stand forever and the idle alarm could never fire: once no report is
                # fresh, what is in flight is what this process still holds leases for.
                self._in_flight = _gate_in_flight()
            self._peak_in_flight = self._in_flight
            still_waiting = self._waiting if self._clock() - self._waiting_at < WAITING_FRESH_S else 0
            peak_waiting, self._peak_waiting = self._peak_waiting, still_waiting
        ready = len(self._snap.ready)
        counts = _gate_counts()
        deltas = {k: max(v - self._counted.get(k, 0.0), 0.0) for k, v in counts.items()}
        self._counted = counts
        values = {
            "InFlight": float(peak),
            metrics.INFLIGHT_PER_REPLICA: peak / max(ready, 1),
            "ReadyReplicas": float(ready),
            metrics.REQUESTS: deltas.get("requests", 0.0),
            metrics.WAITING: float(peak_waiting),
            "Rejected429": deltas.get("429", 0.0),
            "Rejected503": deltas.get("503", 0.0),
        }
        dims = [{"Name": metrics.DIMENSION, "Value": self.config.endpoint}]
        return [
            {"MetricName": name, "Dimensions": dims, "Value": values[name], "Unit": unit}
            for name, (unit, _) in metrics.PUBLISHED.items()
            if name in values
        ]

    def publish_metrics(self) -> None:
        self._cw.put_metric_data(Namespace=metrics.NAMESPACE, MetricData=self.metric_data())

    # -- capacity fallback ------------------------------------------------------------------------

    def check_capacity(self) -> str | None:
        """After a launch failed for lack of capacity, switch to the next fallback type. Returns it."""
        failure = asgops.capacity_failure(asgops.recent_activities(self._asg, self.asg_name))
        if failure is None or failure.get("ActivityId") == self._handled_activity:
            return None
        self._handled_activity = str(failure.get("ActivityId"))
        group = asgops.describe_group(self._asg, self.asg_name)
        if group is None:
            return None
        current = asgops.template_ref(self._asg, self._ec2, group).instance_type
        return self.fall_back(group, current, str(failure.get("StatusMessage", "insufficient capacity")))

    def fall_back(self, group: Mapping[str, Any], current: str | None, why: str) -> str | None:
        order = [t for t in (self._primary, *self._fallbacks) if t]
        later = order[order.index(current) + 1 :] if current in order else list(self._fallbacks)
        if not later:
            log.error("%s: launches fail (%s) and no fallback instance type is left after %s",
                      self.asg_name, why, current)
            return None
        nxt = later[0]
        asgops.switch_instance_type(
            self._asg, self._ec2, group, nxt,
            reason=f"warmstart capacity fallback {current} -> {nxt}", also=later[1:],
        )
        asgops.set_group_tag(self._asg, self.asg_name, asgops.FALLBACK_TAG, f"{current}->{nxt}")
        log.warning("%s: %s short of capacity (%s); launching %s instead until the next pulumi up",
                    self.asg_name, current, why, nxt)
        return nxt

    # -- background -------------------------------------------------------------------------------

    def step(self) -> None:
        """One round of the background loop (the loop calls it every discovery_ttl_s)."""
        now = self._clock()
        self.refresh()
        # The gate reports demand when it admits; a long stream admitted minutes ago is demand
        # too. Recording this process's live leases keeps a busy endpoint out of the idle rule.
        live = _gate_in_flight()
        if live > 0:
            self.controller.observe(live)
        if now >= self._next_tick:
            self._next_tick = now + self.tick_interval_s
            decision = self.controller.tick()
            if decision is not None:
                self._note_desired(decision.desired)
            if self._snap.growing:
                self.check_capacity()
        if now >= self._next_metrics:
            self._next_metrics = now + self.metrics_interval_s
            self.publish_metrics()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except (BotoCoreError, ClientError, RedisError, OSError) as e:
                log.warning("%s: pool refresh failed (serving from the last view): %s", self.asg_name, e)
            except Exception:  # the thread must survive a bad response; the gate keeps routing
                log.exception("%s: pool background loop error", self.asg_name)
            self._stop.wait(self.discovery_ttl_s)
