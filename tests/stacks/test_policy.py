"""Policies hold for every environment, and each one fails on a deliberately bad resource."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from stacks import policy
from stacks.preview import Graph
from tests.support.pulumi_harness import Recorder

TAGS = {"endpoint": "e", "environment": "test", "variant": "v"}


def test_every_environment_passes_every_policy(env_graph: Graph) -> None:
    assert [str(v) for v in policy.check(env_graph)] == []
    # and the rules had something to look at
    assert env_graph.of_type(policy.LAUNCH_TEMPLATE) and env_graph.of_type(policy.ASG)
    assert policy.policy_documents(env_graph)


def _lt(name: str, tokens: str = "required", encrypted: str = "true", snapshot: str | None = None) -> None:
    ebs = aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(volume_size=20, snapshot_id=snapshot) if snapshot else \
        aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(volume_size=20, encrypted=encrypted)
    aws.ec2.LaunchTemplate(
        name, image_id="ami-1", tags=TAGS,
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(http_tokens=tokens),
        block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(device_name="/dev/xvda", ebs=ebs)],
    )


def _only(violations: list[policy.Violation], rule: str) -> list[str]:
    assert violations, f"{rule} found nothing"
    assert {v.rule for v in violations} == {rule}
    return [v.resource for v in violations]


def test_imdsv1_launch_template_fails(pulumi_record: Recorder) -> None:
    g = pulumi_record(lambda: (_lt("good"), _lt("bad", tokens="optional")))
    assert _only(policy.imdsv2_required(g), "imdsv2_required") == ["aws:ec2/launchTemplate:LaunchTemplate::bad"]


def test_unencrypted_volumes_fail(pulumi_record: Recorder) -> None:
    def program() -> None:
        _lt("good")
        _lt("plain", encrypted="false")
        _lt("unknown-snapshot", snapshot="snap-0123456789abcdef0")
        aws.ebs.Volume("vol", availability_zone="us-east-1a", size=10, encrypted=False, tags=TAGS)
        aws.elasticache.ReplicationGroup("cache", description="d", node_type="cache.t4g.small",
                                         transit_encryption_enabled=False, tags=TAGS)

    bad = _only(policy.volumes_encrypted(pulumi_record(program)), "volumes_encrypted")
    assert sorted(bad) == ["aws:ebs/volume:Volume::vol", "aws:ec2/launchTemplate:LaunchTemplate::plain",
                           "aws:ec2/launchTemplate:LaunchTemplate::unknown-snapshot",
                           "aws:elasticache/replicationGroup:ReplicationGroup::cache"]


def test_snapshot_volume_passes_only_when_the_snapshot_reads_encrypted(pulumi_record: Recorder) -> None:
    def program() -> None:
        snap = aws.ebs.Snapshot.get("weights", "snap-0123456789abcdef0")
        _lt("from-snapshot", snapshot=snap.id)  # type: ignore[arg-type]

    assert policy.volumes_encrypted(pulumi_record(program)) == []


def test_world_open_ports_fail_except_alb_listeners(pulumi_record: Recorder) -> None:
    def program() -> None:
        alb_sg = aws.ec2.SecurityGroup("alb-sg", vpc_id="vpc-1", tags=TAGS)
        other = aws.ec2.SecurityGroup("other-sg", vpc_id="vpc-1", tags=TAGS)
        lb = aws.lb.LoadBalancer("alb", security_groups=[alb_sg.id], subnets=["a", "b"], tags=TAGS)
        aws.lb.Listener("https", load_balancer_arn=lb.arn, port=443, protocol="HTTPS", tags=TAGS,
                        default_actions=[aws.lb.ListenerDefaultActionArgs(type="fixed-response")])
        rule = aws.vpc.SecurityGroupIngressRule
        rule("alb-443", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=443, to_port=443,
             cidr_ipv4="0.0.0.0/0", tags=TAGS)
        rule("alb-8080", security_group_id=alb_sg.id, ip_protocol="tcp", from_port=8080, to_port=8080,
             cidr_ipv6="::/0", tags=TAGS)
        rule("ssh", security_group_id=other.id, ip_protocol="tcp", from_port=22, to_port=22,
             cidr_ipv4="0.0.0.0/0", tags=TAGS)
        rule("vpc-only", security_group_id=other.id, ip_protocol="tcp", from_port=22, to_port=22,
             cidr_ipv4="10.0.0.0/16", tags=TAGS)
        aws.ec2.SecurityGroup("inline", vpc_id="vpc-1", tags=TAGS, ingress=[aws.ec2.SecurityGroupIngressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"])])
        aws.ec2.SecurityGroupRule("legacy", type="ingress", security_group_id=other.id, protocol="tcp",
                                  from_port=443, to_port=443, cidr_blocks=["0.0.0.0/0"])

    bad = _only(policy.no_open_ingress(pulumi_record(program)), "no_open_ingress")
    assert sorted(bad) == ["aws:ec2/securityGroup:SecurityGroup::inline",
                           "aws:ec2/securityGroupRule:SecurityGroupRule::legacy",
                           "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule::alb-8080",
                           "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule::ssh"]


def test_wildcard_action_fails(pulumi_record: Recorder) -> None:
    def doc(action: object) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [
            {"Sid": "S", "Effect": "Allow", "Action": action, "Resource": "*"}]})

    def program() -> None:
        role = aws.iam.Role("r", assume_role_policy=doc("sts:AssumeRole"), tags=TAGS)
        aws.iam.RolePolicy("star", role=role.id, policy=doc("*"))
        aws.iam.RolePolicy("star-list", role=role.id, policy=doc(["s3:GetObject", "*"]))
        aws.iam.RolePolicy("fine", role=role.id, policy=doc(["s3:GetObject"]))

    bad = _only(policy.no_wildcard_actions(pulumi_record(program)), "no_wildcard_actions")
    assert sorted(bad) == ["aws:iam/rolePolicy:RolePolicy::star", "aws:iam/rolePolicy:RolePolicy::star-list"]


def test_untagged_resources_fail(pulumi_record: Recorder) -> None:
    def program() -> None:
        aws.ec2.Vpc("tagged", cidr_block="10.0.0.0/16", tags=TAGS)
        aws.ec2.Vpc("no-variant", cidr_block="10.0.0.0/16", tags={"endpoint": "e", "environment": "t"})
        aws.sns.Topic("bare")
        aws.cloudwatch.Dashboard("not-taggable", dashboard_name="d", dashboard_body="{}")
        aws.autoscaling.Group("asg-not-propagated", max_size=1, min_size=0, tags=[
            aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=False) for k, v in TAGS.items()],
            opts=pulumi.ResourceOptions(ignore_changes=["desiredCapacity"]))

    bad = _only(policy.tagged(pulumi_record(program)), "tagged")
    assert sorted(bad) == ["aws:autoscaling/group:Group::asg-not-propagated", "aws:ec2/vpc:Vpc::no-variant",
                           "aws:sns/topic:Topic::bare"]


def test_asg_desired_capacity_must_be_ignored(pulumi_record: Recorder) -> None:
    def program() -> None:
        aws.autoscaling.Group("managed", max_size=1, min_size=0, desired_capacity=1)
        aws.autoscaling.Group("ignored", max_size=1, min_size=0, desired_capacity=1,
                              opts=pulumi.ResourceOptions(ignore_changes=["desiredCapacity"]))

    bad = _only(policy.asg_desired_ignored(pulumi_record(program)), "asg_desired_ignored")
    assert bad == ["aws:autoscaling/group:Group::managed"]


def test_managed_snapshots_must_be_retained(pulumi_record: Recorder) -> None:
    def program() -> None:
        aws.ebs.Snapshot("deletable", volume_id="vol-1", tags=TAGS)
        aws.ebs.Snapshot("kept", volume_id="vol-2", tags=TAGS, opts=pulumi.ResourceOptions(retain_on_delete=True))
        aws.ebs.Snapshot.get("read", "snap-0123456789abcdef0")

    bad = _only(policy.snapshots_retained(pulumi_record(program)), "snapshots_retained")
    assert bad == ["aws:ebs/snapshot:Snapshot::deletable"]

