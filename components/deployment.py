"""Deployment: one endpoint on the EC2 substrate, composed from the other components.

Order matters only where machines boot: the log groups (Monitoring) exist before any gate or
replica instance starts; the gate's security group exists before the replicas' rule refers to
it. Physical names come from warmstart.naming so day-two commands find them with boto3 alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import child, invoke, standard_tags
from components.edge import Edge, EdgeArgs
from components.keys import Keys, KeysArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.network import Network, NetworkArgs
from components.nodegroup import GpuNodeGroup, GpuNodeGroupArgs
from components.scaling import Scaling, ScalingArgs
from components.weights import WeightCache, WeightCacheArgs
from warmstart.spec import EndpointConfig, Variant


@dataclass
class DeploymentArgs:
    endpoint: EndpointConfig
    variant: Variant
    region: str
    image_uri: str
    # The slim gate image the gate instances run (stacks/config.py derives it beside image_uri).
    gate_image_uri: str
    # Customer-managed KMS keys that encrypt the instances' volumes (warmstart:ebsKmsKeyArns).
    ebs_kms_key_arns: Sequence[str] = ()


class Deployment(pulumi.ComponentResource):
    endpoint_url: pulumi.Output[str]
    api_key: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    variant: str

    def __init__(self, name: str, args: DeploymentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:deployment:Deployment", name, None, opts)
        ep, v = args.endpoint, args.variant
        env = ep.environment
        tags = standard_tags(env, ep.name, v.name)
        instance_type = ep.instance_type_for(v)

        network = Network(f"{name}-net", NetworkArgs(
            tags=tags, region=args.region, existing=ep.network, nat_per_az=env == "prod",
            # AZs are chosen where every instance type this endpoint launches is offered.
            instance_types=(instance_type, ep.gate_instance_type),
        ), opts=child(self))
        keys = Keys(f"{name}-keys", KeysArgs(environment=env, endpoint=ep.name, plan=ep.plan, tags=tags),
                    opts=child(self))
        monitoring = Monitoring(f"{name}-mon", MonitoringArgs(
            environment=env, endpoint=ep.name, region=args.region, instance_type=instance_type,
            gate_instances=ep.gate_instances, log_retention_days=ep.log_retention_days, tags=tags,
            alarm_email=ep.alarm_email,
        ), opts=child(self))
        weights = WeightCache(f"{name}-weights", WeightCacheArgs(
            variant=v, availability_zones=network.availability_zones, az_count=network.az_count,
            fast_snapshot_restore=ep.fast_snapshot_restore, tags=tags,
        ), opts=child(self))
        edge = Edge(f"{name}-edge", EdgeArgs(
            endpoint=ep, variant=v, region=args.region, gate_image_uri=args.gate_image_uri,
            az_count=network.az_count, vpc_id=network.vpc_id, vpc_cidr=network.vpc_cidr,
            public_subnet_ids=network.public_subnet_ids, private_subnet_ids=network.private_subnet_ids,
            keys_table_name=keys.table_name, keys_table_arn=keys.table_arn,
            log_group_arn=monitoring.gate_log_group.arn, tags=tags, boot_before=[monitoring.gate_log_group],
        ), opts=child(self))
        # Stopped: no replica may run (max 0); the gate answers 503 (GateConfig.stopped).
        min_size = 0 if ep.stopped else ep.min_replicas
        max_size = 0 if ep.stopped else ep.max_replicas
        nodes = GpuNodeGroup(f"{name}-replicas", GpuNodeGroupArgs(
            environment=env, endpoint=ep.name, region=args.region, variant=v, instance_type=instance_type,
            image_uri=args.image_uri, vpc_id=network.vpc_id, subnet_ids=network.private_subnet_ids,
            gate_security_group_id=edge.gate_security_group_id, snapshot_id=weights.snapshot_id,
            log_group_arn=monitoring.replica_log_group.arn, min_size=min_size, max_size=max_size,
            warm_pool_size=ep.warm_pool_size, tags=tags,
            volume_initialization_rate=ep.volume_initialization_rate, drain_timeout_s=ep.request_timeout_s,
            gate_role_name=edge.gate_role_name, boot_before=[monitoring.replica_log_group],
        ), opts=child(self))
        Scaling(f"{name}-scaling", ScalingArgs(
            endpoint=ep.name, asg_name=nodes.asg_name, mode=ep.mode, target_per_replica=ep.cap_for(v),
            idle_timeout_s=ep.idle_timeout_s, stopped=ep.stopped, tags=tags,
        ), opts=child(self))

        grant_volume_keys(self, name, args.ebs_kms_key_arns, after=[edge, nodes])

        self.endpoint_url = edge.url
        self.api_key = keys.api_key
        self.dashboard_url = monitoring.dashboard_url
        self.variant = v.name
        self.register_outputs({
            "endpoint_url": self.endpoint_url, "api_key": self.api_key,
            "dashboard_url": self.dashboard_url, "variant": self.variant,
        })


# What Auto Scaling's service-linked role needs on a customer-managed key to launch instances with
# volumes it encrypts (EC2 Auto Scaling, "Required AWS KMS key policy for use with encrypted volumes").
ASG_KEY_OPERATIONS = ("CreateGrant", "Decrypt", "DescribeKey", "Encrypt", "GenerateDataKey",
                      "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo")


def grant_volume_keys(parent: pulumi.Resource, name: str, keys: Sequence[str], after: Sequence[pulumi.Resource]) -> None:
    """A KMS grant per customer-managed key for AWSServiceRoleForAutoScaling. Created after the
    groups: creating the first group is what creates that role (a grant to a role that does not
    exist yet is refused), and a group simply retries its launches until the grant exists."""
    if not keys:
        return
    account = aws.get_caller_identity_output(opts=invoke(parent)).account_id
    role = pulumi.Output.concat("arn:aws:iam::", account,
                                ":role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling")
    for i, key in enumerate(keys):
        aws.kms.Grant(f"{name}-asg-volume-key-{i}", key_id=key, grantee_principal=role,
                      operations=list(ASG_KEY_OPERATIONS), opts=child(parent, depends_on=list(after)))
