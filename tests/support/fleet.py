"""A replica fleet in moto, named exactly as the Pulumi program names it (warmstart.naming).

`fleet` builds, on the moto server of `aws_env`: a VPC with two private subnets, the replica
launch template (GPU instance type) and the replica ASG (min 0, desired 0), tagged like the
real one. `stack_dir` copies a stack file that declares the same endpoint, for the commands'
`--stack ENV` path. `aws_calls` records calls moto does not implement (instance refresh, Fast
Snapshot Restore) at botocore's before-call hook: the real client still validates every
parameter against the AWS API model; only the response is supplied.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from warmstart import naming

ENV = "dev"
ENDPOINT = "chat"
VARIANT = "llama31-8b-fp8-l4"


@dataclass
class Fleet:
    region: str
    asg_name: str
    launch_template_id: str
    subnets: list[str]
    environment: str = ENV
    endpoint: str = ENDPOINT

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region)

    def group(self) -> dict[str, Any]:
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[self.asg_name])
        return dict(groups["AutoScalingGroups"][0])


def make_fleet(region: str, *, environment: str = ENV, endpoint: str = ENDPOINT,
               instance_type: str = "g6.xlarge", max_size: int = 4, min_size: int = 0) -> Fleet:
    import boto3

    ec2 = boto3.client("ec2", region_name=region)
    asg = boto3.client("autoscaling", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{az}")["Subnet"]["SubnetId"]
        for i, az in enumerate("ab")
    ]
    lt = ec2.create_launch_template(
        LaunchTemplateName=naming.replica_launch_template_name(environment, endpoint),
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": instance_type},
    )["LaunchTemplate"]
    name = naming.replica_asg_name(environment, endpoint)
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplateId"], "Version": "$Latest"},
        MinSize=min_size, MaxSize=max_size, DesiredCapacity=min_size,
        VPCZoneIdentifier=",".join(subnets),
        Tags=[
            {"Key": k, "Value": v, "PropagateAtLaunch": True}
            for k, v in (
                # as components/base.py standard_tags() tags every resource of an endpoint
                ("environment", environment), ("endpoint", endpoint), ("variant", VARIANT),
                ("managed-by", "warmstart"),
            )
        ],
    )
    return Fleet(region=region, asg_name=name, launch_template_id=lt["LaunchTemplateId"], subnets=subnets,
                 environment=environment, endpoint=endpoint)


@pytest.fixture()
def fleet(aws_env: str) -> Fleet:
    from tests.support.moto_server import REGION

    return make_fleet(REGION)


STACK_TEMPLATE = """\
# dev stack (test copy). Comments must survive the commands that edit this file.
config:
  aws:region: us-east-1
  warmstart:environment: dev
  warmstart:endpoints:
    - name: chat        # the chat endpoint
      variant: {variant}
      plan: team
      mode: flex
      max_replicas: 4
      allow_http: true
    - name: batch
      variant: llama31-8b-eagle3-l40s
      plan: team
      mode: active
      min_replicas: 1
      max_replicas: 2
      allow_http: true
"""


@pytest.fixture()
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stacks/ directory with Pulumi.dev.yaml declaring endpoints chat and batch; the commands use it."""
    d = tmp_path / "stacks"
    d.mkdir()
    (d / "Pulumi.dev.yaml").write_text(textwrap.dedent(STACK_TEMPLATE.format(variant=VARIANT)))
    monkeypatch.setenv("WARMSTART_STACKS_DIR", str(d))
    return d


@dataclass
class CallLog:
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for op, params in self.calls if op == operation]


@pytest.fixture()
def aws_calls(aws_env: str) -> Iterator[Callable[[str, str, dict[str, Any]], CallLog]]:
    """intercept(service, Operation, response): record that operation's calls on boto3's default session.

    Only for the operations moto does not implement; everything else still goes to moto.
    """
    import boto3

    boto3.setup_default_session()
    session = boto3.DEFAULT_SESSION
    assert session is not None
    log = CallLog()

    def intercept(service: str, operation: str, response: dict[str, Any]) -> CallLog:
        event_id = boto3.client(service).meta.service_model.service_id.hyphenize()

        def record(params: dict[str, Any], **_: Any) -> None:
            log.calls.append((operation, dict(params)))

        def respond(**_: Any) -> tuple[Any, dict[str, Any]]:
            class _Http:
                status_code = 200
                headers: dict[str, str] = {}

            return _Http(), {**response, "ResponseMetadata": {"HTTPStatusCode": 200}}

        # before-parameter-build sees the caller's parameters; botocore then validates them against
        # the API model (a wrong name or type still fails) before before-call short-circuits the send.
        session.events.register(f"before-parameter-build.{event_id}.{operation}", record)
        session.events.register(f"before-call.{event_id}.{operation}", respond)
        return log

    yield intercept
    boto3.DEFAULT_SESSION = None
