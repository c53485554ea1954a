"""GpuNodeGroup: IAM, security group, launch template and ASG of the replica pool."""

from __future__ import annotations

import json

import pytest

from components.nodegroup import (
    DRAIN_MARGIN_S,
    GPU_AMI_PARAMETER,
    LAUNCH_HOOK,
    TERMINATE_HOOK,
    refresh_preferences,
    warm_pool_bounds,
    weights_volume_performance,
)
from runtime.image import cloudinit
from stacks.preview import AwsMocks, Graph, _h
from tests.support.pulumi_harness import render_values, stack_graph, stack_values, with_endpoint
from warmstart import naming
from warmstart.spec import load_variant

LT = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"


def replica_lt(g: Graph):  # type: ignore[no-untyped-def]
    return g.one(LT, "replicas-lt")


def replica_asg(g: Graph):  # type: ignore[no-untyped-def]
    return g.one(ASG, "replicas-asg")


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_launch_template(env: str) -> None:
    g = stack_graph(env)
    lt = replica_lt(g).inputs
    ep = g.one("warmstart:deployment:Deployment").name
    variant = load_variant(g.outputs["variant"]["value"])
    assert lt["name"] == naming.replica_launch_template_name(env, ep)
    assert lt["instanceType"] == variant.gpu.instance_type
    # the GPU AMI comes from the SSM parameter (the mock answers "ami-0" + hash of the name)
    assert lt["imageId"] == "ami-0" + _h(GPU_AMI_PARAMETER, 16)
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["metadataOptions"]["httpEndpoint"] == "enabled"
    root, weights = lt["blockDeviceMappings"]
    assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
    w = weights["ebs"]
    assert weights["deviceName"] == cloudinit.WEIGHTS_DEVICE
    assert w["snapshotId"] == variant.weights_snapshot_id
    assert w["volumeType"] == "gp3" and w["iops"] >= 3000 and w["throughput"] >= 125
    assert w["volumeSize"] == variant.weights_size_gib
    assert "encrypted" not in w  # EC2 refuses it with a snapshot; WeightCache checks the snapshot
    profile = g.one("aws:iam/instanceProfile:InstanceProfile", "replicas-profile")
    assert lt["iamInstanceProfile"] == {"arn": profile.outputs["arn"]}
    assert lt["vpcSecurityGroupIds"] == [g.one("aws:ec2/securityGroup:SecurityGroup", "replicas-sg").id]
    kinds = {ts["resourceType"] for ts in lt["tagSpecifications"]}
    assert kinds == {"instance", "volume"}


def test_volume_initialization_rate_where_configured() -> None:
    assert replica_lt(stack_graph("staging")).inputs["blockDeviceMappings"][1]["ebs"]["volumeInitializationRate"] == 300
    assert "volumeInitializationRate" not in replica_lt(stack_graph("dev")).inputs["blockDeviceMappings"][1]["ebs"]


def test_user_data_is_the_rendered_replica_cloud_config() -> None:
    g = stack_graph("prod")
    ud = cloudinit.decode(replica_lt(g).inputs["userData"])
    expected = cloudinit.render_replica(cloudinit.ReplicaUserData(
        variant=load_variant("llama31-8b-eagle3-l40s"), image_uri=stack_values("prod")["warmstart:imageUri"],
        region="us-east-1", log_group=naming.replica_log_group("prod", "chat"),
        asg_name=naming.replica_asg_name("prod", "chat"), launch_hook_name=LAUNCH_HOOK,
        terminate_hook_name=TERMINATE_HOOK, drain_timeout_s=600,
    ))
    assert ud == expected


@pytest.mark.parametrize(("env", "lo", "hi", "warm"), [("dev", 0, 2, 0), ("staging", 0, 4, 1), ("prod", 1, 8, 2)])
def test_autoscaling_group(env: str, lo: int, hi: int, warm: int) -> None:
    asg = replica_asg(stack_graph(env))
    i = asg.inputs
    assert i["name"] == naming.replica_asg_name(env, "chat")
    assert (i["minSize"], i["maxSize"]) == (lo, hi)
    assert asg.options["ignore_changes"] == ["desiredCapacity"]
    assert i["healthCheckGracePeriod"] >= 300
    assert i["waitForCapacityTimeout"] == "0"
    (hook,) = i["initialLifecycleHooks"]
    assert hook["name"] == LAUNCH_HOOK and hook["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    if warm:
        assert i["warmPool"]["poolState"] == "Stopped" and i["warmPool"]["minSize"] == warm
    else:
        assert "warmPool" not in i
    lt = replica_lt(stack_graph(env))
    assert i["launchTemplate"]["id"] == lt.id
    assert "chat-mon-replicas" in asg.options["depends_on"]  # its log group exists before it boots
    tags = {t["key"]: t for t in i["tags"]}
    assert all(tags[k]["propagateAtLaunch"] for k in ("endpoint", "environment", "variant"))


def test_stopped_endpoint_runs_no_replica() -> None:
    g = render_values(with_endpoint("prod", stopped=True))
    i = replica_asg(g).inputs
    assert (i["minSize"], i["maxSize"]) == (0, 0)
    cfg = json.loads(g.one("aws:ssm/parameter:Parameter").inputs["value"])
    assert cfg["stopped"] is True
    replica_policies = [p for p in g.of_type("aws:autoscaling/policy:Policy")
                        if p.inputs["autoscalingGroupName"] == replica_asg(g).outputs["name"]]
    assert replica_policies and all(p.inputs["enabled"] is False for p in replica_policies)


def test_change_gpu_sets_the_launch_template_instance_type() -> None:
    g = render_values(with_endpoint("dev", gpu_instance_type="g5.xlarge"))
    assert replica_lt(g).inputs["instanceType"] == "g5.xlarge"


def test_engine_port_only_from_the_gate() -> None:
    g = stack_graph("prod")
    sg = g.one("aws:ec2/securityGroup:SecurityGroup", "replicas-sg")
    gate_sg = g.one("aws:ec2/securityGroup:SecurityGroup", "gate-sg")
    ingress = [r for r in g.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
               if r.inputs["securityGroupId"] == sg.id]
    assert len(ingress) == 1
    rule = ingress[0].inputs
    assert (rule["fromPort"], rule["toPort"], rule["ipProtocol"]) == (8000, 8000, "tcp")
    assert rule["referencedSecurityGroupId"] == gate_sg.id
    assert "cidrIpv4" not in rule and "cidrIpv6" not in rule
    egress = [r.inputs for r in g.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
              if r.inputs["securityGroupId"] == sg.id]
    assert [(e["fromPort"], e["toPort"]) for e in egress] == [(443, 443)]


def test_replica_role_is_least_privilege() -> None:
    g = stack_graph("prod")
    doc = json.loads(g.one("aws:iam/rolePolicy:RolePolicy", "replicas-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert set(by_sid) == {"OwnLogs", "OwnLifecycleHook", "OwnPhaseTag", "EcrLogin", "EcrPull"}
    assert by_sid["OwnPhaseTag"]["Condition"]["ForAllValues:StringEquals"] == {"aws:TagKeys": ["warmstart:phase"]}
    log_arn = g.one("aws:cloudwatch/logGroup:LogGroup", "mon-replicas").outputs["arn"]
    assert by_sid["OwnLogs"]["Resource"] == [f"{log_arn}:log-stream:*"]
    assert by_sid["OwnLifecycleHook"]["Resource"] == [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/ws-prod-chat-replicas"]
    assert by_sid["EcrPull"]["Resource"] == ["arn:aws:ecr:us-east-1:123456789012:repository/warmstart-runtime"]
    wildcard = [s["Sid"] for s in doc["Statement"] if "*" in s["Resource"]]
    assert wildcard == ["EcrLogin"]
    trust = json.loads(g.one("aws:iam/role:Role", "replicas-role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}


@pytest.mark.parametrize(("env", "request_timeout_s"), [("dev", None), ("prod", None), ("dev", 1800)])
def test_leaving_replicas_drain_through_a_termination_hook(env: str, request_timeout_s: int | None) -> None:
    """Scale-in, stop and change-gpu's instance refresh wait while the replica's streams finish."""
    g = render_values(with_endpoint(env, request_timeout_s=request_timeout_s)) if request_timeout_s \
        else stack_graph(env)
    timeout = request_timeout_s or 600  # the spec's default request timeout
    (hook,) = g.of_type("aws:autoscaling/lifecycleHook:LifecycleHook")
    h = hook.inputs
    assert h["name"] == TERMINATE_HOOK and h["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert h["autoscalingGroupName"] == replica_asg(g).inputs["name"] == naming.replica_asg_name(env, "chat")
    # the heartbeat outlasts the drain (bounded by the request timeout), and then lets go
    assert h["heartbeatTimeout"] == timeout + DRAIN_MARGIN_S and DRAIN_MARGIN_S >= 60
    assert h["defaultResult"] == "CONTINUE"
    env_file = cloudinit.written_file(cloudinit.decode(replica_lt(g).inputs["userData"]), cloudinit.BOOT_ENV)
    assert {f"TERMINATE_HOOK_NAME={TERMINATE_HOOK}", f"DRAIN_TIMEOUT_S={timeout}"} <= set(env_file.splitlines())
    # the role may complete exactly this group's actions and tag only its endpoint's instances' phase
    doc = json.loads(g.one("aws:iam/rolePolicy:RolePolicy", "replicas-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["OwnLifecycleHook"]["Action"] == ["autoscaling:CompleteLifecycleAction",
                                                    "autoscaling:RecordLifecycleActionHeartbeat"]
    (asg_arn,) = by_sid["OwnLifecycleHook"]["Resource"]
    assert asg_arn.endswith(f":autoScalingGroupName/{h['autoscalingGroupName']}")
    tag = by_sid["OwnPhaseTag"]
    assert tag["Action"] == ["ec2:CreateTags"]
    assert tag["Condition"]["StringEquals"] == {"aws:ResourceTag/endpoint": "chat", "aws:ResourceTag/environment": env}


def test_operations_doc_describes_the_drain_and_idle_rule_the_code_has() -> None:
    from pathlib import Path

    from warmstart import metrics

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    ops = " ".join(text.split("<!-- section:operations -->")[1].split("<!-- /section:operations -->")[0].split())
    assert f"(`{TERMINATE_HOOK}`, heartbeat = `request_timeout_s` + {DRAIN_MARGIN_S} s)" in ops
    assert all(name in ops for name in metrics.PUBLISHED)  # every metric the gates publish


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_instance_refresh_health_range_is_one_aws_accepts(env: str) -> None:
    """RefreshPreferences.MaxHealthyPercentage: "the difference between them cannot be greater than
    100" — min 0 / max 200 passes the first `pulumi up` and fails every later launch-template change.
    Launch before terminate (100/200): a serving replica leaves only after its replacement serves."""
    prefs = replica_asg(stack_graph(env)).inputs["instanceRefresh"]["preferences"]
    assert 0 <= prefs["maxHealthyPercentage"] - prefs["minHealthyPercentage"] <= 100
    assert (prefs["minHealthyPercentage"], prefs["maxHealthyPercentage"]) == (100, 200)
    for min_size in (0, 1, 8):
        lo, hi = refresh_preferences(min_size)
        assert 100 <= hi <= 200 and hi - lo <= 100


@pytest.mark.parametrize(("env", "size"), [("staging", 1), ("prod", 2)])
def test_warm_pool_keeps_exactly_its_size(env: str, size: int) -> None:
    """PutWarmPool: "Only when MaxGroupPreparedCapacity and MinSize are set to the same value does the
    warm pool have an absolute size"; max(max_size, size) kept max - desired instances prepared
    (prod: 7, not 2), each a stopped GPU instance with a billed, pre-read volume."""
    pool = replica_asg(stack_graph(env)).inputs["warmPool"]
    assert pool["minSize"] == pool["maxGroupPreparedCapacity"] == size
    assert warm_pool_bounds(3) == (3, 3)


def test_weights_volume_performance_stops_at_the_instance_ebs_limit() -> None:
    """gp3 performance above the included 3,000 IOPS / 125 MiB/s is billed per volume, stopped or not;
    above the instance's EBS maximum (DescribeInstanceTypes MaximumThroughputInMBps / MaximumIops)
    nothing can read it. gp3: "maximum ratio of provisioned throughput to provisioned IOPS is .25
    MiB/s per IOPS"."""
    # g6e.xlarge: 625 MB/s = 596 MiB/s
    assert weights_volume_performance(wanted_mibps=1000, wanted_iops=4000, instance_max_mbps=625.0,
                                      instance_max_iops=20000) == (596, 4000)
    # a type that can take it all gets what was asked
    assert weights_volume_performance(wanted_mibps=1000, wanted_iops=4000, instance_max_mbps=1250.0,
                                      instance_max_iops=40000) == (1000, 4000)
    # the IOPS cap binds throughput by the 0.25 ratio; never below gp3's included figures
    assert weights_volume_performance(wanted_mibps=1000, wanted_iops=4000, instance_max_mbps=1250.0,
                                      instance_max_iops=3200) == (800, 3200)
    assert weights_volume_performance(wanted_mibps=1000, wanted_iops=4000, instance_max_mbps=100.0,
                                      instance_max_iops=2000) == (125, 3000)
    assert weights_volume_performance(wanted_mibps=1000, wanted_iops=4000, instance_max_mbps=None,
                                      instance_max_iops=None) == (1000, 4000)


@pytest.mark.parametrize(("env", "itype"), [("dev", "g6.xlarge"), ("prod", "g6e.xlarge")])
def test_weights_volume_sized_from_the_instance_type(env: str, itype: str) -> None:
    g = stack_graph(env)
    ebs = replica_lt(g).inputs["blockDeviceMappings"][1]["ebs"]
    mbps, iops = AwsMocks.EBS[itype]
    assert ebs["throughput"] <= mbps * 1e6 / 2**20 and ebs["iops"] <= iops
    assert ebs["throughput"] <= ebs["iops"] * 0.25


def test_launch_hook_heartbeat_bounds_one_phase_and_the_scripts_beat() -> None:
    """RecordLifecycleActionHeartbeat "resets the heartbeat timeout": the boot scripts beat between
    launch phases (pull, pre-read, engine warm-up), so HeartbeatTimeout bounds one phase, which the
    serving boot's own wait stays inside; the role may beat for its own group only."""
    g = stack_graph("prod")
    (hook,) = replica_asg(g).inputs["initialLifecycleHooks"]
    ud = cloudinit.decode(replica_lt(g).inputs["userData"])
    tries = int(next(ln for ln in cloudinit.written_file(ud, cloudinit.BOOT_ENV).splitlines()
                     if ln.startswith("READY_WAIT_TRIES=")).split("=")[1])
    assert tries * 5 < hook["heartbeatTimeout"] <= 7200
    for script in ("replica-boot.sh", "warm-pool-hook.sh"):
        assert "record-lifecycle-action-heartbeat" in cloudinit.written_file(ud, f"{cloudinit.BIN_DIR}/{script}")
