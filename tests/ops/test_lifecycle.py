"""`warmstart endpoint status|logs|stop|start|change-gpu` against moto's server, through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from runtime.scaling import asg as asgops
from tests.support.fleet import Fleet, make_fleet
from warmstart.cli import cli
from warmstart.ops import asg as ops


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def endpoint_in(stack_dir: Path, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((stack_dir / "Pulumi.dev.yaml").read_text())
    return next(e for e in doc["config"]["warmstart:endpoints"] if e["name"] == name)


def set_desired(fleet: Fleet, n: int) -> None:
    fleet.client("autoscaling").set_desired_capacity(AutoScalingGroupName=fleet.asg_name, DesiredCapacity=n)


def test_status_shows_state_and_replica_phases(fleet: Fleet, stack_dir: Path) -> None:
    res = run("endpoint", "status", "--stack", "dev", "--endpoint", "chat")
    assert res.exit_code == 0, res.output
    assert "ws-dev-chat-replicas: active (idle at zero replicas (Flex)" in res.output
    set_desired(fleet, 2)
    res = run("endpoint", "status", "--stack", "dev", "--endpoint", "chat", "--json")
    assert res.exit_code == 0, res.output
    import json

    st = json.loads(res.output)
    assert st["state"] == "active" and st["desired"] == 2 and st["instance_type"] == "g6.xlarge"
    assert [r["phase"] for r in st["replicas"]] == ["ready", "ready"]


def test_status_follows_a_stopped_stack_file_before_the_group_has_the_tag(fleet: Fleet, stack_dir: Path) -> None:
    path = stack_dir / "Pulumi.dev.yaml"
    path.write_text(path.read_text().replace("mode: flex\n", "mode: flex\n      stopped: true\n", 1))
    res = run("endpoint", "status", "--stack", "dev", "--endpoint", "chat")
    assert "ws-dev-chat-replicas: stopped (stopped by `warmstart endpoint stop`" in res.output


def test_status_of_an_undeployed_endpoint_is_provisioning(aws_env: str, stack_dir: Path) -> None:
    res = run("endpoint", "status", "--stack", "dev", "--endpoint", "chat")
    assert res.exit_code == 0, res.output
    assert "provisioning (the replica group does not exist yet" in res.output


def test_stop_then_start_through_the_stack(fleet: Fleet, stack_dir: Path) -> None:
    set_desired(fleet, 2)
    asg = fleet.client("autoscaling")
    asg.put_warm_pool(AutoScalingGroupName=fleet.asg_name, MinSize=1, MaxGroupPreparedCapacity=3)

    res = run("endpoint", "stop", "--stack", "dev", "--endpoint", "chat")
    assert res.exit_code == 0, res.output
    group = fleet.group()
    assert (group["DesiredCapacity"], group["MinSize"], group["MaxSize"]) == (0, 0, 0)
    assert asgops.group_tags(group)[asgops.STOPPED_TAG] == "true"
    pool = asg.describe_warm_pool(AutoScalingGroupName=fleet.asg_name)["WarmPoolConfiguration"]
    assert (pool["MinSize"], pool["MaxGroupPreparedCapacity"]) == (0, 0)
    assert endpoint_in(stack_dir, "chat")["stopped"] is True
    text = (stack_dir / "Pulumi.dev.yaml").read_text()
    assert "# the chat endpoint" in text and text.startswith("# dev stack (test copy)")
    assert "stopped" in run("endpoint", "status", "--stack", "dev", "--endpoint", "chat").output

    res = run("endpoint", "start", "--stack", "dev", "--endpoint", "chat")
    assert res.exit_code == 0, res.output
    group = fleet.group()
    assert asgops.STOPPED_TAG not in asgops.group_tags(group)
    assert (group["DesiredCapacity"], group["MinSize"], group["MaxSize"]) == (0, 0, 4)  # Flex: woken by a request
    pool = asg.describe_warm_pool(AutoScalingGroupName=fleet.asg_name)["WarmPoolConfiguration"]
    assert (pool["MinSize"], pool["MaxGroupPreparedCapacity"]) == (1, 3)
    assert endpoint_in(stack_dir, "chat")["stopped"] is False


def test_start_restores_an_active_endpoints_floor(aws_env: str, stack_dir: Path) -> None:
    from tests.support.moto_server import REGION

    batch = make_fleet(REGION, endpoint="batch", instance_type="g6e.xlarge")
    assert run("endpoint", "stop", "--stack", "dev", "--endpoint", "batch").exit_code == 0
    assert run("endpoint", "start", "--stack", "dev", "--endpoint", "batch").exit_code == 0
    group = batch.group()
    assert (group["MinSize"], group["DesiredCapacity"]) == (1, 1)


def test_break_glass_by_asg_name_needs_no_stack(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMSTART_STACKS_DIR", "/nonexistent")
    res = run("endpoint", "stop", "--asg", fleet.asg_name, "--region", fleet.region)
    assert res.exit_code == 0, res.output
    assert asgops.group_tags(fleet.group())[asgops.STOPPED_TAG] == "true"
    res = run("endpoint", "start", "--asg", fleet.asg_name, "--min", "1")
    assert res.exit_code == 0, res.output
    group = fleet.group()
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (1, 4, 1)  # max restored from the tag
    res = run("endpoint", "status", "--asg", fleet.asg_name)
    assert "active (1 replica(s) ready)" in res.output
    # The log group comes from the group's environment/endpoint tags (the Pulumi program's).
    logs = fleet.client("logs")
    logs.create_log_group(logGroupName="/warmstart/dev/chat/replicas")
    logs.create_log_stream(logGroupName="/warmstart/dev/chat/replicas", logStreamName="s")
    import time

    logs.put_log_events(logGroupName="/warmstart/dev/chat/replicas", logStreamName="s",
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "vLLM API server ready"}])
    res = run("endpoint", "logs", "--asg", fleet.asg_name)
    assert res.exit_code == 0 and res.output.rstrip().endswith("s vLLM API server ready"), res.output


def test_start_after_pulumi_applied_stopped_needs_a_ceiling(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    # `pulumi up` of a stopped endpoint leaves max size 0 and none of the command's tags.
    fleet.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=fleet.asg_name, MinSize=0, MaxSize=0)
    res = CliRunner().invoke(cli, ["endpoint", "start", "--asg", fleet.asg_name, "--min", "1"])
    assert res.exit_code == 2 and "has max size 0 and no saved size (stopped by pulumi up?); pass --max N" in res.stderr
    res = run("endpoint", "start", "--asg", fleet.asg_name, "--min", "1", "--max", "3")
    assert res.exit_code == 0, res.output
    group = fleet.group()
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (1, 3, 1)


def test_change_gpu_new_template_version_and_rolling_refresh(fleet: Fleet, stack_dir: Path,
                                                             aws_calls: Any) -> None:
    set_desired(fleet, 2)
    refreshes = aws_calls("autoscaling", "StartInstanceRefresh", {"InstanceRefreshId": "refresh-1"})
    res = CliRunner().invoke(cli, ["endpoint", "change-gpu", "--stack", "dev", "--endpoint", "chat",
                                   "--to", "g6e.xlarge"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "warning: variant llama31-8b-fp8-l4 was tuned on g6.xlarge" in res.stderr
    assert "version 2 launches g6e.xlarge (was g6.xlarge)" in res.stdout

    versions = fleet.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=fleet.launch_template_id)["LaunchTemplateVersions"]
    v2 = next(v for v in versions if v["VersionNumber"] == 2)
    assert v2["LaunchTemplateData"]["InstanceType"] == "g6e.xlarge"
    # (AWS copies the rest from SourceVersion; moto ignores SourceVersion, so it is not checked here.)
    assert fleet.group()["LaunchTemplate"]["Version"] == "2"

    assert refreshes.of("StartInstanceRefresh") == [{
        "AutoScalingGroupName": fleet.asg_name,
        "Strategy": "Rolling",
        "DesiredConfiguration": {"LaunchTemplate": {"LaunchTemplateId": fleet.launch_template_id, "Version": "2"}},
        "Preferences": {
            "MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 300,
            "SkipMatching": True, "ScaleInProtectedInstances": "Wait", "StandbyInstances": "Terminate",
        },
    }]
    assert endpoint_in(stack_dir, "chat")["gpu_instance_type"] == "g6e.xlarge"


def test_change_gpu_with_no_replicas_needs_no_refresh(fleet: Fleet, aws_calls: Any) -> None:
    refreshes = aws_calls("autoscaling", "StartInstanceRefresh", {"InstanceRefreshId": "refresh-1"})
    res = run("endpoint", "change-gpu", "--asg", fleet.asg_name, "--to", "g6.xlarge")
    assert res.exit_code == 0, res.output
    assert "no running replicas" in res.output and "warning" not in res.output
    assert refreshes.of("StartInstanceRefresh") == []


def test_logs_prints_and_follows_the_replica_log_group(fleet: Fleet, stack_dir: Path) -> None:
    import time

    logs = fleet.client("logs")
    group = "/warmstart/dev/chat/replicas"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="i-0abc/vllm")
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName="i-0abc/vllm", logEvents=[
        {"timestamp": now - 2000, "message": "Loading weights took 41.2 seconds"},
        {"timestamp": now - 1000, "message": "Application startup complete."},
    ])
    res = run("endpoint", "logs", "--stack", "dev", "--endpoint", "chat", "--since", "5m")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "Loading weights took 41.2 seconds", "Application startup complete."]
    assert all(" i-0abc/vllm " in line for line in lines)

    def more(_: float) -> None:  # between two polls, the replica logs one more line
        logs.put_log_events(logGroupName=group, logStreamName="i-0abc/vllm",
                            logEvents=[{"timestamp": int(time.time() * 1000), "message": "GET /health 200"}])

    followed = list(ops.log_events(group, region=fleet.region, since_s=300, follow=True, polls=2, sleep=more))
    assert [f.split(" ", 3)[3] for f in followed] == [
        "Loading weights took 41.2 seconds", "Application startup complete.", "GET /health 200"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--stack", "nope"], "stack='nope' has no file"),
        (["status", "--stack", "dev", "--endpoint", "ghost"], "endpoint='ghost' is not in stack dev; use one of: chat, batch"),
        (["status", "--stack", "dev"], "stack dev has 2 endpoints (chat, batch); name one with --endpoint NAME"),
        (["status"], "name the endpoint with --stack ENV"),
        (["status", "--stack", "dev", "--asg", "x"], "name the endpoint with --stack ENV"),
        (["change-gpu", "--stack", "dev", "--endpoint", "chat", "--to", "g9.mega"],
         "instance type 'g9.mega' is not a supported GPU instance type; use one of g5.xlarge"),
        (["change-gpu", "--stack", "dev", "--endpoint", "chat", "--to", "cpu"], "has no GPU"),
        (["start", "--asg", "ws-dev-chat-replicas"], "with --asg, pass --min N"),
        (["start", "--asg", "ws-dev-chat-replicas", "--min", "9"], "--min 9 is outside 0..4"),
        (["stop", "--asg", "no-such-group"], "auto scaling group 'no-such-group' does not exist"),
        (["logs", "--stack", "dev", "--endpoint", "chat", "--since", "soon"], "--since 'soon' is not a duration"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(fleet: Fleet, stack_dir: Path, args: list[str],
                                                          message: str) -> None:
    before = (stack_dir / "Pulumi.dev.yaml").read_text()
    res = CliRunner().invoke(cli, ["endpoint", *args], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert message in res.stderr
    assert (stack_dir / "Pulumi.dev.yaml").read_text() == before
    versions = fleet.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=fleet.launch_template_id)["LaunchTemplateVersions"]
    assert len(versions) == 1


def test_endpoint_state_rules() -> None:
    s = ops.endpoint_state
    assert s(exists=False, stopped=False, desired=0, ready=0, starting=0, failure=None)[0] == "provisioning"
    assert s(exists=True, stopped=True, desired=0, ready=0, starting=0, failure=None)[0] == "stopped"
    assert s(exists=True, stopped=False, desired=2, ready=0, starting=2, failure=None)[0] == "provisioning"
    assert s(exists=True, stopped=False, desired=2, ready=0, starting=0, failure="InsufficientInstanceCapacity") \
        == ("failed", "InsufficientInstanceCapacity")
    assert s(exists=True, stopped=False, desired=2, ready=1, starting=1, failure="x")[0] == "active"
    assert s(exists=True, stopped=False, desired=0, ready=0, starting=0, failure=None)[0] == "active"


def test_metrics_subcommand_is_registered_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    from warmstart.commands.endpoint import EndpointGroup

    assert "metrics" in run("endpoint", "--help").output
    monkeypatch.setattr(EndpointGroup, "METRICS", ("warmstart.no_such_monitoring.cli", "metrics"))
    res = CliRunner().invoke(cli, ["endpoint", "metrics", "--stack", "dev"])
    assert res.exit_code == 2
    assert res.stderr == "error: `endpoint metrics` is not installed in this build (warmstart.monitoring is missing)\n"


def test_change_gpu_on_a_mixed_instances_group_rewrites_the_overrides(aws_env: str, aws_calls: Any) -> None:
    import boto3

    from tests.support.moto_server import REGION

    refreshes = aws_calls("autoscaling", "StartInstanceRefresh", {"InstanceRefreshId": "refresh-2"})
    ec2 = boto3.client("ec2", region_name=REGION)
    asg = boto3.client("autoscaling", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.0.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    lt = ec2.create_launch_template(LaunchTemplateName="mixed",
                                    LaunchTemplateData={"ImageId": "ami-12c6146b"})["LaunchTemplate"]["LaunchTemplateId"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName="mixed", MinSize=0, MaxSize=2, DesiredCapacity=1, VPCZoneIdentifier=subnet,
        MixedInstancesPolicy={"LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateId": lt, "Version": "1"},
            "Overrides": [{"InstanceType": "g6.xlarge"}, {"InstanceType": "g5.xlarge"}],
        }},
        Tags=[{"Key": "variant", "Value": "llama31-8b-fp8-l4", "PropagateAtLaunch": False}],
    )
    change = ops.change_gpu(ops.target_from_asg("mixed", REGION), "g6e.xlarge")
    assert (change.previous, change.instance_type, change.version) == ("g6.xlarge", "g6e.xlarge", 2)
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["mixed"])["AutoScalingGroups"][0]
    spec = group["MixedInstancesPolicy"]["LaunchTemplate"]
    assert spec["LaunchTemplateSpecification"]["Version"] == "2"
    # the new type first, then the variant's fallbacks
    assert [o["InstanceType"] for o in spec["Overrides"]] == ["g6e.xlarge", "g5.xlarge"]
    (call,) = refreshes.of("StartInstanceRefresh")
    assert call["DesiredConfiguration"] == {"MixedInstancesPolicy": {"LaunchTemplate": {
        "LaunchTemplateSpecification": {"LaunchTemplateId": lt, "Version": "2"},
        "Overrides": [{"InstanceType": "g6e.xlarge"}, {"InstanceType": "g5.xlarge"}],
    }}}
