"""The replica Auto Scaling group as the scaling code sees it: thin boto3 calls, one place.

Shared by the gate's pool (runtime/pool/aws.py) and the day-two commands (warmstart/ops/asg.py),
so a capacity fallback taken by a gate and a `change-gpu` run by an operator do the same thing:
a new launch-template version carrying the new instance type, and the group pointed at it.

Pulumi owns the group's shape; these calls change only what the program leaves alone
(`desired_capacity` is in its ignore_changes) or what the next `pulumi up` resets on purpose
(an emergency instance-type switch returns to the configured type with the next deploy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Tags on the group (set by the operations) and on replicas (set by the replica itself).
STOPPED_TAG = "warmstart:stopped"
"""On the ASG: "true" while the endpoint is stopped; the gate answers 503 "stopped" and never wakes it."""
FALLBACK_TAG = "warmstart:capacity-fallback"
"""On the ASG: the instance type a gate switched to after an InsufficientInstanceCapacity failure."""
SAVED_WARM_POOL_TAG = "warmstart:stopped-warm-pool"
"""On the ASG: "<min>,<max prepared>" of the warm pool before `endpoint stop`, restored by `start`."""
SAVED_MAX_TAG = "warmstart:stopped-max-size"
"""On the ASG: the max size before `endpoint stop` set it to 0 (as `pulumi up` of a stopped endpoint does)."""
PHASE_TAG = "warmstart:phase"
"""On a replica instance: loading-weights | warming | ready, written by the replica as it boots."""
PORT_TAG = "warmstart:port"
"""On the ASG (optional): the engine port replicas listen on; default 8000."""

_CAPACITY = re.compile(
    r"InsufficientInstanceCapacity|insufficient capacity|We currently do not have sufficient",
    re.IGNORECASE,
)


def group_tags(group: Mapping[str, Any]) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in group.get("Tags", [])}


def describe_group(client: Any, name: str) -> dict[str, Any] | None:
    groups = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name]).get("AutoScalingGroups", [])
    return dict(groups[0]) if groups else None


def set_desired(client: Any, name: str, desired: int) -> None:
    # HonorCooldown=False: the gate's own rules decide; a cooldown would delay a wake from zero.
    client.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=desired, HonorCooldown=False)


def set_group_tag(client: Any, name: str, key: str, value: str) -> None:
    client.create_or_update_tags(
        Tags=[{
            "ResourceId": name, "ResourceType": "auto-scaling-group",
            "Key": key, "Value": value, "PropagateAtLaunch": False,
        }]
    )


def delete_group_tag(client: Any, name: str, key: str) -> None:
    client.delete_tags(Tags=[{"ResourceId": name, "ResourceType": "auto-scaling-group", "Key": key}])


def capacity_failure(activities: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest scaling activity if it failed for lack of capacity of the instance type, else None.

    Only the newest counts: once a later launch succeeded the shortage is over.
    """
    if not activities:
        return None
    newest = max(activities, key=lambda a: str(a.get("StartTime", "")))
    if newest.get("StatusCode") not in ("Failed", "Cancelled"):
        return None
    text = f"{newest.get('StatusMessage', '')} {newest.get('Description', '')}"
    return newest if _CAPACITY.search(text) else None


def recent_activities(client: Any, name: str, limit: int = 5) -> list[dict[str, Any]]:
    out = client.describe_scaling_activities(AutoScalingGroupName=name, MaxRecords=limit)
    return [dict(a) for a in out.get("Activities", [])]


@dataclass(frozen=True)
class TemplateRef:
    """The launch template the group launches from, with its version resolved to a number."""

    id: str
    version: int
    instance_type: str | None
    mixed: bool
    overrides: tuple[str, ...] = ()


def template_ref(asg: Any, ec2: Any, group: Mapping[str, Any]) -> TemplateRef:
    mixed = group.get("MixedInstancesPolicy")
    if mixed:
        lt_spec = mixed["LaunchTemplate"]["LaunchTemplateSpecification"]
        overrides = tuple(
            str(o["InstanceType"]) for o in mixed["LaunchTemplate"].get("Overrides", []) if "InstanceType" in o
        )
    else:
        lt_spec = group.get("LaunchTemplate")
        overrides = ()
    if not lt_spec:
        raise LookupError(f"group {group.get('AutoScalingGroupName')} launches without a launch template")
    lt_id = lt_spec.get("LaunchTemplateId")
    query = {"LaunchTemplateIds": [lt_id]} if lt_id else {"LaunchTemplateNames": [lt_spec["LaunchTemplateName"]]}
    lt = ec2.describe_launch_templates(**query)["LaunchTemplates"][0]
    raw = str(lt_spec.get("Version") or "$Default")
    if raw == "$Latest":
        version = int(lt["LatestVersionNumber"])
    elif raw == "$Default":
        version = int(lt["DefaultVersionNumber"])
    else:
        version = int(raw)
    data = ec2.describe_launch_template_versions(
        LaunchTemplateId=lt["LaunchTemplateId"], Versions=[str(version)]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    return TemplateRef(
        id=str(lt["LaunchTemplateId"]), version=version,
        instance_type=overrides[0] if overrides else data.get("InstanceType"),
        mixed=bool(mixed), overrides=overrides,
    )


def switch_instance_type(
    asg: Any, ec2: Any, group: Mapping[str, Any], instance_type: str, *,
    reason: str, also: Sequence[str] = (),
) -> TemplateRef:
    """A new launch-template version launching `instance_type`, and the group pointed at it.

    `also`: further types for a mixed-instances group's overrides, tried after the first.
    Returns the new template reference (its version is what an instance refresh should target).
    """
    name = str(group["AutoScalingGroupName"])
    ref = template_ref(asg, ec2, group)
    created = ec2.create_launch_template_version(
        LaunchTemplateId=ref.id,
        SourceVersion=str(ref.version),
        VersionDescription=reason[:255],
        LaunchTemplateData={"InstanceType": instance_type},
    )
    version = int(created["LaunchTemplateVersion"]["VersionNumber"])
    spec = {"LaunchTemplateId": ref.id, "Version": str(version)}
    if ref.mixed:
        types = [instance_type, *[t for t in also if t != instance_type]]
        policy = dict(group["MixedInstancesPolicy"])
        policy["LaunchTemplate"] = {
            "LaunchTemplateSpecification": spec,
            "Overrides": [{"InstanceType": t} for t in types],
        }
        asg.update_auto_scaling_group(AutoScalingGroupName=name, MixedInstancesPolicy=policy)
        overrides = tuple(types)
    else:
        asg.update_auto_scaling_group(AutoScalingGroupName=name, LaunchTemplate=spec)
        overrides = ()
    return TemplateRef(id=ref.id, version=version, instance_type=instance_type, mixed=ref.mixed, overrides=overrides)
