"""The real gate (gunicorn + gevent, pool kind aws) in front of a replica ASG at zero in moto.

The VPC is 127.0.0.0/16, so the instance moto launches gets a loopback private address: the test
starts the deterministic upstream (standing in for vLLM) on exactly that address once the
instance exists, then marks the replica ready with the phase tag, as a real replica does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import boto3
import pytest

from runtime.scaling import asg as asgops
from tests.support.net import free_port, wait_for_port

REGION = "us-east-1"


def loopback_fleet(port: int) -> str:
    ec2 = boto3.client("ec2", region_name=REGION)
    asg = boto3.client("autoscaling", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.0.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    lt = ec2.create_launch_template(
        LaunchTemplateName="ws-e2e-chat-replica",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g6.xlarge"},
    )["LaunchTemplate"]
    name = "ws-e2e-chat-replicas"
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplateId"], "Version": "$Latest"},
        MinSize=0, MaxSize=2, DesiredCapacity=0, VPCZoneIdentifier=subnet["SubnetId"],
        Tags=[
            # A new replica starts "loading weights" (launch tags); it says "ready" itself later.
            {"Key": asgops.PHASE_TAG, "Value": "loading-weights", "PropagateAtLaunch": True},
            {"Key": asgops.PORT_TAG, "Value": str(port), "PropagateAtLaunch": False},
        ],
    )
    return name


def wait(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cond()


@pytest.mark.slow
def test_requests_wake_the_group_once_are_held_and_served_when_ready(
        aws_env: str, gate_factory: Any) -> None:
    import openai

    port = free_port()
    name = loopback_fleet(port)
    gate = gate_factory(pool={"kind": "aws", "asg_name": name, "region": REGION, "max_replicas": 2},
                        hold_timeout_s=90, plan="pro")
    key = gate.mint()
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client = openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=0, timeout=150)
            r = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            results.append(str(r.choices[0].message.content))
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()

    asg = boto3.client("autoscaling", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    wait(lambda: asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]["Instances"])
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    assert group["DesiredCapacity"] == 1  # ten waiting requests, one wake
    instance_id = group["Instances"][0]["InstanceId"]
    ip = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["PrivateIpAddress"]
    assert ip.startswith("127.0.0.")

    vllm = subprocess.Popen([sys.executable, "-m", "tests.support.upstream", "--host", ip,
                             "--port", str(port), "--tokens", "4"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_port(port, host=ip)
        assert results == [] and errors == []  # still held: the replica is loading weights
        ec2.create_tags(Resources=[instance_id], Tags=[{"Key": asgops.PHASE_TAG, "Value": "ready"}])
        for t in threads:
            t.join(timeout=150)
        assert errors == [], errors[:1]
        assert len(results) == 10 and all(r.startswith("tok0") for r in results)
        assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0][
            "DesiredCapacity"] == 1
    finally:
        vllm.send_signal(signal.SIGTERM)
        vllm.wait(timeout=10)


@pytest.mark.slow
def test_a_stopped_group_gets_503_stopped_and_is_not_woken(aws_env: str, gate_factory: Any) -> None:
    import httpx

    name = loopback_fleet(free_port())
    asg = boto3.client("autoscaling", region_name=REGION)
    asgops.set_group_tag(asg, name, asgops.STOPPED_TAG, "true")
    gate = gate_factory(pool={"kind": "aws", "asg_name": name, "region": REGION, "max_replicas": 2},
                        hold_timeout_s=30)
    key = gate.mint()
    r = httpx.post(f"{gate.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "default", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert r.status_code == 503
    assert "stopped" in r.json()["error"]["message"]
    assert asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0][
        "DesiredCapacity"] == 0
