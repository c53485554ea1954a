"""Endpoint lifecycle on its replica ASG: status, stop, start, change-gpu, logs.

A `Target` names the group and what is known about it: from a stack file (`--stack ENV`, names
from warmstart.naming) or from the group's own tags (`--asg NAME`, break-glass). Each operation
acts on the live group at once; the commands also write the stack file when there is one.

Endpoint state (`status`):

    provisioning   the group does not exist yet, or replicas are launching and none is ready
    active         at least one replica ready, or a Flex endpoint idle at zero (the next request wakes it)
    stopped        `endpoint stop`: tag warmstart:stopped=true, min 0, desired 0; the gate answers 503
    failed         the newest scaling activity failed and nothing is ready (the reason is shown)

Replica phases come from runtime.pool.aws.replica_phase (ASG lifecycle state + the replica's
warmstart:phase tag), the same function the gate uses to decide where to route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from runtime.pool.aws import replica_phase
from runtime.scaling import asg as asgops
from warmstart import naming
from warmstart.errors import ConfigError, OperationError
from warmstart.ops.aws import client, describe
from warmstart.spec import GPU_INSTANCES, Variant, load_variant

# ---------------------------------------------------------------------------------------------
# Target


@dataclass(frozen=True)
class Target:
    asg_name: str
    region: str | None = None
    environment: str | None = None
    endpoint: str | None = None
    variant: str | None = None
    floor: int = 0  # min_replicas of the endpoint (Active >= 1)
    max_size: int | None = None  # max_replicas of the endpoint (from the stack)
    warm_pool_size: int | None = None
    stopped: bool = False  # the stack file says stopped (the next pulumi up keeps it so)

    @property
    def log_group(self) -> str | None:
        if self.environment and self.endpoint:
            return naming.replica_log_group(self.environment, self.endpoint)
        return None


def target_from_asg(name: str, region: str | None) -> Target:
    """Break-glass: everything from the group and its tags, no stack file and no Pulumi."""
    group = _group(client("autoscaling", region), name, region)
    tags = asgops.group_tags(group)

    def tag(key: str) -> str | None:
        # The Pulumi program tags resources environment/endpoint/variant (components/base.py).
        return tags.get(key) or tags.get(f"warmstart:{key}")

    return Target(
        asg_name=name, region=region,
        environment=tag("environment"), endpoint=tag("endpoint"),
        variant=tag("variant"), floor=int(group.get("MinSize", 0)),
    )


def _group(asg: Any, name: str, region: str | None) -> dict[str, Any]:
    try:
        group = asgops.describe_group(asg, name)
    except (BotoCoreError, ClientError) as e:
        raise OperationError(f"cannot read auto scaling group {name}: {describe(e)}") from None
    if group is None:
        where = f" in {region}" if region else ""
        raise OperationError(
            f"auto scaling group {name!r} does not exist{where}; check --asg/--region, or run pulumi up"
        )
    return group


def _aws(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except (BotoCoreError, ClientError) as e:
        raise OperationError(f"{what} failed: {describe(e)}") from None


# ---------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class ReplicaStatus:
    instance_id: str
    instance_type: str
    zone: str
    lifecycle_state: str
    phase: str
    private_ip: str


@dataclass(frozen=True)
class EndpointStatus:
    asg_name: str
    state: str
    why: str
    desired: int = 0
    min_size: int = 0
    max_size: int = 0
    instance_type: str | None = None
    replicas: tuple[ReplicaStatus, ...] = ()
    warm_pool: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "asg": self.asg_name, "state": self.state, "why": self.why, "desired": self.desired,
            "min": self.min_size, "max": self.max_size, "instance_type": self.instance_type,
            "warm_pool": self.warm_pool, "notes": list(self.notes),
            "replicas": [r.__dict__ for r in self.replicas],
        }


def endpoint_state(
    *, exists: bool, stopped: bool, desired: int, ready: int, starting: int, failure: str | None,
) -> tuple[str, str]:
    """(state, why) from the facts; pure, so every combination is tested."""
    if not exists:
        return "provisioning", "the replica group does not exist yet (pulumi up not run, or still running)"
    if stopped:
        if ready or starting:
            return "stopped", f"stopping: {ready + starting} replica(s) draining"
        return "stopped", "stopped by `warmstart endpoint stop`; `warmstart endpoint start` brings it back"
    if ready:
        return "active", f"{ready} replica(s) ready" + (f", {starting} starting" if starting else "")
    if failure:
        return "failed", failure
    if desired > 0:
        return "provisioning", f"{max(starting, desired)} replica(s) launching, none ready yet"
    return "active", "idle at zero replicas (Flex); the next request wakes it"


def status(target: Target) -> EndpointStatus:
    region = target.region
    asg = client("autoscaling", region)
    try:
        group = asgops.describe_group(asg, target.asg_name)
    except (BotoCoreError, ClientError) as e:
        raise OperationError(f"cannot read auto scaling group {target.asg_name}: {describe(e)}") from None
    if group is None:
        state, why = endpoint_state(exists=False, stopped=False, desired=0, ready=0, starting=0, failure=None)
        return EndpointStatus(asg_name=target.asg_name, state=state, why=why)
    ec2 = client("ec2", region)
    tags = asgops.group_tags(group)
    members = group.get("Instances", [])
    ids = [str(i["InstanceId"]) for i in members]
    info: dict[str, dict[str, str]] = {}
    if ids:
        for res in _aws(lambda: ec2.describe_instances(InstanceIds=ids), "DescribeInstances")["Reservations"]:
            for inst in res["Instances"]:
                itags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                info[inst["InstanceId"]] = {
                    "ip": inst.get("PrivateIpAddress", ""), "phase": itags.get(asgops.PHASE_TAG, ""),
                }
    replicas: list[ReplicaStatus] = []
    warm = 0
    for m in members:
        iid = str(m["InstanceId"])
        phase = replica_phase(str(m["LifecycleState"]), str(m.get("HealthStatus", "")), info.get(iid, {}).get("phase"))
        if phase is None:
            warm += str(m["LifecycleState"]).startswith("Warmed:")
            continue
        replicas.append(ReplicaStatus(
            instance_id=iid, instance_type=str(m.get("InstanceType", "")),
            zone=str(m.get("AvailabilityZone", "")), lifecycle_state=str(m["LifecycleState"]),
            phase=phase, private_ip=info.get(iid, {}).get("ip", ""),
        ))
    ready = sum(r.phase == "ready" for r in replicas)
    starting = sum(r.phase in ("launching", "loading weights", "warming") for r in replicas)
    failure = None
    try:
        acts = asgops.recent_activities(asg, target.asg_name)
        failed = asgops.capacity_failure(acts) or _failed_activity(acts)
        if failed:
            failure = str(failed.get("StatusMessage") or failed.get("Description") or "scaling activity failed")
    except (BotoCoreError, ClientError):
        failure = None  # activities are a diagnosis aid; never fail status over them
    try:
        instance_type = asgops.template_ref(asg, ec2, group).instance_type
    except (BotoCoreError, ClientError, LookupError, KeyError, IndexError):
        instance_type = None
    stopped = tags.get(asgops.STOPPED_TAG) == "true" or target.stopped
    state, why = endpoint_state(
        exists=True, stopped=stopped, desired=int(group["DesiredCapacity"]),
        ready=ready, starting=starting, failure=failure,
    )
    notes = []
    if tags.get(asgops.FALLBACK_TAG):
        notes.append(f"capacity fallback in effect: {tags[asgops.FALLBACK_TAG]} (reset by the next pulumi up)")
    return EndpointStatus(
        asg_name=target.asg_name, state=state, why=why, desired=int(group["DesiredCapacity"]),
        min_size=int(group["MinSize"]), max_size=int(group["MaxSize"]), instance_type=instance_type,
        replicas=tuple(replicas), warm_pool=warm, notes=tuple(notes),
    )


def _failed_activity(activities: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not activities:
        return None
    newest = max(activities, key=lambda a: str(a.get("StartTime", "")))
    return newest if newest.get("StatusCode") in ("Failed", "Cancelled") else None


# ---------------------------------------------------------------------------------------------
# Stop / start


def stop(target: Target) -> str:
    """No replicas and no warm pool (no GPU or volume charges); the gate answers 503 "stopped".

    Max size 0 too, as `pulumi up` of a stopped endpoint declares: no scaling policy or gate can
    raise capacity until `start`.
    """
    asg = client("autoscaling", target.region)
    group = _group(asg, target.asg_name, target.region)
    name = target.asg_name
    # Tag first: gates stop waking the group before its capacity goes to zero.
    _aws(lambda: asgops.set_group_tag(asg, name, asgops.STOPPED_TAG, "true"), "tagging the group stopped")
    if int(group["MaxSize"]) > 0:
        _aws(lambda: asgops.set_group_tag(asg, name, asgops.SAVED_MAX_TAG, str(group["MaxSize"])),
             "saving the max size")
    _aws(lambda: asg.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=0, MaxSize=0,
                                               DesiredCapacity=0), "UpdateAutoScalingGroup")
    pool = _aws(lambda: asg.describe_warm_pool(AutoScalingGroupName=name), "DescribeWarmPool")
    conf = pool.get("WarmPoolConfiguration")
    if conf and (conf.get("MinSize", 0) or conf.get("MaxGroupPreparedCapacity", -1) != 0):
        saved = f"{conf.get('MinSize', 0)},{conf.get('MaxGroupPreparedCapacity', -1)}"
        _aws(lambda: asgops.set_group_tag(asg, name, asgops.SAVED_WARM_POOL_TAG, saved), "saving the warm pool")
        _aws(lambda: asg.put_warm_pool(
            AutoScalingGroupName=name, MinSize=0, MaxGroupPreparedCapacity=0,
            PoolState=conf.get("PoolState", "Stopped"),
        ), "PutWarmPool")
    running = sum(not str(i["LifecycleState"]).startswith("Warmed:") for i in group.get("Instances", []))
    return f"stopped {name}: {running} replica(s) draining, desired 0, min 0, max 0" + (
        ", warm pool emptied" if conf else ""
    )


def start(target: Target, min_size: int | None = None, max_size: int | None = None) -> str:
    """Back to the configured floor (Flex: 0, woken by the next request; Active: min_replicas)."""
    asg = client("autoscaling", target.region)
    name = target.asg_name
    group = _group(asg, name, target.region)
    tags = asgops.group_tags(group)
    floor = target.floor if min_size is None else min_size
    saved = tags.get(asgops.SAVED_MAX_TAG)
    ceiling = max_size or target.max_size or (int(saved) if saved else int(group["MaxSize"]))
    if ceiling < 1:
        raise ConfigError(
            f"group {name} has max size 0 and no saved size (stopped by pulumi up?); pass --max N"
        )
    if floor < 0 or floor > ceiling:
        raise ConfigError(f"--min {floor} is outside 0..{ceiling} (the group's max size); pick one in range")
    desired = min(max(floor, int(group["DesiredCapacity"])), ceiling)
    _aws(lambda: asg.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=floor, MaxSize=ceiling,
                                               DesiredCapacity=desired), "UpdateAutoScalingGroup")
    if saved:
        _aws(lambda: asgops.delete_group_tag(asg, name, asgops.SAVED_MAX_TAG), "DeleteTags")
    saved = tags.get(asgops.SAVED_WARM_POOL_TAG)
    if saved:
        lo, hi = (int(x) for x in saved.split(","))
        _aws(lambda: asg.put_warm_pool(AutoScalingGroupName=name, MinSize=lo, MaxGroupPreparedCapacity=hi),
             "PutWarmPool")
        _aws(lambda: asgops.delete_group_tag(asg, name, asgops.SAVED_WARM_POOL_TAG), "DeleteTags")
    if asgops.STOPPED_TAG in tags:
        _aws(lambda: asgops.delete_group_tag(asg, name, asgops.STOPPED_TAG), "DeleteTags")
    woken = "the next request wakes it" if desired == 0 else f"{desired} replica(s) starting"
    return f"started {name}: min {floor}, max {ceiling}, desired {desired} ({woken})"


# ---------------------------------------------------------------------------------------------
# Change GPU


@dataclass(frozen=True)
class GpuChange:
    previous: str | None
    instance_type: str
    launch_template_id: str
    version: int
    refresh_id: str | None
    warning: str | None


def check_gpu(instance_type: str, variant: Variant | None) -> str | None:
    """Validate the new type for AWS; return a warning when the variant was tuned on another type."""
    known = ", ".join(t for t in GPU_INSTANCES if t != "cpu")
    info = GPU_INSTANCES.get(instance_type)
    if info is None:
        raise ConfigError(f"instance type {instance_type!r} is not a supported GPU instance type; use one of {known}")
    if info.gpu_count == 0:
        raise ConfigError(f"instance type {instance_type!r} has no GPU; use one of {known}")
    if variant is None:
        return None
    tp = variant.engine.tensor_parallel_size
    if info.gpu_count < tp:
        raise ConfigError(
            f"{instance_type} has {info.gpu_count} GPU(s) but variant {variant.name} needs "
            f"tensor_parallel_size={tp}; pick a type with >= {tp} GPUs"
        )
    if variant.tuned_on and variant.tuned_on != instance_type:
        return (
            f"variant {variant.name} was tuned on {variant.tuned_on}; on {instance_type} its benchmark "
            "figures and engine settings are untested (consider building a variant for it)"
        )
    return None


def request_instance_refresh(asg: Any, **params: Any) -> str:
    """StartInstanceRefresh, kept in one named place (moto lacks it; tests intercept this call)."""
    return str(asg.start_instance_refresh(**params)["InstanceRefreshId"])


def change_gpu(target: Target, instance_type: str, *, instance_warmup_s: int = 300) -> GpuChange:
    variant = load_variant(target.variant) if target.variant else None
    warning = check_gpu(instance_type, variant)
    asg = client("autoscaling", target.region)
    ec2 = client("ec2", target.region)
    group = _group(asg, target.asg_name, target.region)
    try:
        before = asgops.template_ref(asg, ec2, group)
        fallbacks = variant.gpu.fallback_instance_types if variant else ()
        ref = asgops.switch_instance_type(
            asg, ec2, group, instance_type,
            reason=f"warmstart change-gpu {before.instance_type} -> {instance_type}", also=fallbacks,
        )
    except (BotoCoreError, ClientError) as e:
        raise OperationError(f"creating the launch template version failed: {describe(e)}") from None
    except LookupError as e:
        raise OperationError(str(e)) from None
    running = [i for i in group.get("Instances", []) if str(i["LifecycleState"]) != "Terminated"]
    refresh_id = None
    if running:
        spec = {"LaunchTemplateId": ref.id, "Version": str(ref.version)}
        desired_config: dict[str, Any] = (
            {"MixedInstancesPolicy": {"LaunchTemplate": {
                "LaunchTemplateSpecification": spec,
                "Overrides": [{"InstanceType": t} for t in ref.overrides],
            }}}
            if ref.mixed else {"LaunchTemplate": spec}
        )
        # Launch before terminate (min healthy 100%, max 200%): capacity never dips, and each old
        # replica leaves through the group's termination lifecycle hook, where it drains its
        # in-flight streams before it is terminated. The gate stops routing to it (phase draining).
        refresh_id = _aws(lambda: request_instance_refresh(
            asg,
            AutoScalingGroupName=target.asg_name,
            Strategy="Rolling",
            DesiredConfiguration=desired_config,
            Preferences={
                "MinHealthyPercentage": 100,
                "MaxHealthyPercentage": 200,
                "InstanceWarmup": instance_warmup_s,
                "SkipMatching": True,
                "ScaleInProtectedInstances": "Wait",
                "StandbyInstances": "Terminate",
            },
        ), "StartInstanceRefresh")
    return GpuChange(
        previous=before.instance_type, instance_type=instance_type, launch_template_id=ref.id,
        version=ref.version, refresh_id=refresh_id, warning=warning,
    )


# ---------------------------------------------------------------------------------------------
# Logs


def log_events(
    log_group: str, *, region: str | None, since_s: float = 600.0, follow: bool = False,
    poll_s: float = 2.0, polls: int | None = None, sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """Lines of the replicas' log group, oldest first; with follow, keep polling (Ctrl-C ends it).

    polls: stop after that many polls (tests); None = forever when following.
    """
    logs = client("logs", region)
    start_ms = int((time.time() - since_s) * 1000)
    seen: set[str] = set()
    n = 0
    while True:
        kwargs: dict[str, Any] = {"logGroupName": log_group, "startTime": start_ms}
        newest = start_ms
        while True:
            try:
                page = logs.filter_log_events(**kwargs)
            except ClientError as e:
                if "ResourceNotFound" in describe(e):
                    raise OperationError(
                        f"log group {log_group} does not exist yet; replicas create it as they boot"
                    ) from None
                raise OperationError(f"FilterLogEvents failed: {describe(e)}") from None
            for ev in page.get("events", []):
                if ev["eventId"] in seen:
                    continue
                seen.add(ev["eventId"])
                newest = max(newest, int(ev["timestamp"]))
                ts = datetime.fromtimestamp(ev["timestamp"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
                yield f"{ts} {ev.get('logStreamName', '-')} {str(ev['message']).rstrip()}"
            token = page.get("nextToken")
            if not token:
                break
            kwargs["nextToken"] = token
        n += 1
        if not follow or (polls is not None and n >= polls):
            return
        start_ms = newest  # events at the same millisecond are de-duplicated by eventId
        sleep(poll_s)
