"""Edge: ALB -> gate tier -> (Redis/Valkey, key table, replica pool).

- ALB in the public subnets: HTTPS with an ACM certificate when a domain is set (HTTP then only
  redirects), plain HTTP only where the endpoint allows it. Its idle timeout, the gate's
  keep-alive (above it), the target group's deregistration delay and gunicorn's graceful timeout
  all come from one rule (components/timeouts.py). least_outstanding_requests: a gate busy
  holding long streams gets fewer new ones.
- Gate tier: small CPU instances in the private subnets running the slim gate image (gunicorn +
  gevent); the target group's health check is /livez (the worker serves HTTP; never Redis or
  the key store, whose outage must not make the ALB replace every gate). Target tracking on CPU
  between a floor across AZs and a ceiling sized from the plan's concurrency (gate_tier_size).
- ElastiCache Valkey with TLS in transit, encryption at rest and an AUTH token, reachable only
  from the gate's security group.
- The gate's whole configuration is one runtime.gate.config.GateConfig, rendered into an SSM
  SecureString parameter that the gate instances fetch at boot and on a timer (a change reloads
  gunicorn in place: no gate restarts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.base import (
    Tags,
    asg_arn,
    asg_tags,
    assume_role_policy,
    child,
    image_pull_statements,
    instance_arch,
    invoke,
    named,
    policy_document,
    statement,
)
from components.timeouts import EdgeTimeouts, edge_timeouts
from runtime.gate.config import GateConfig, PoolConfig
from runtime.image import cloudinit
from runtime.replica.launcher import DEFAULT_PORT
from warmstart import metrics, naming
from warmstart.spec import EndpointConfig, Variant

AL2023_AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
REDIS_PORT = 6379


# The ALB's health check: 200 whenever a gate worker serves HTTP (runtime/gate/app.py).
LIVENESS_PATH = "/livez"
# Gate tier sizing, from docs/benchmarks.md: one gevent worker relays ~5,000 SSE events per
# CPU-second (gate + Redis store); a stream at 40 tokens/s is 40 events/s; target tracking holds
# CPU at GATE_CPU_TARGET, leaving the rest for bursts and a lost AZ's share.
GATE_EVENTS_PER_VCPU_S = 5000
STREAM_EVENTS_PER_S = 40
GATE_CPU_TARGET = 50.0
# Gate boot, estimated until the slim image's pull is measured on the gate type: instance boot and
# cloud-init 60 s, `dnf install docker` 90 s, pulling and extracting the slim gate image (< 1 GiB
# at >= 20 MiB/s through NAT) 60 s, gunicorn start + two passing health checks (10 s apart) 30 s.
GATE_BOOT_S = 60 + 90 + 60 + 30
# The AL2023 AMI's root snapshot (8 GiB), the image twice (compressed layers + extracted) and
# room for docker's metadata; logs go to CloudWatch (awslogs), not the disk.
GATE_ROOT_GIB = 16


def alb_idle_timeout(ep: EndpointConfig) -> int:
    return timeouts_for(ep).alb_idle_s


def timeouts_for(ep: EndpointConfig) -> EdgeTimeouts:
    return edge_timeouts(request_timeout_s=ep.request_timeout_s, hold_timeout_s=ep.hold_timeout_s)


def vcpus(instance_type: str) -> int:
    """vCPUs of a current-generation type from its size (medium 1, large 2, xlarge 4, Nxlarge 4N)."""
    size = instance_type.split(".", 1)[-1]
    fixed = {"medium": 1, "large": 2, "xlarge": 4}
    if size in fixed:
        return fixed[size]
    if size.endswith("xlarge") and size[:-6].isdigit():
        return 4 * int(size[:-6])
    raise ValueError(f"gate_instance_type={instance_type!r}: unknown size {size!r}; use e.g. c7i.large or c7i.xlarge")


def gate_tier_size(*, plan_concurrency: int, instance_type: str, floor: int) -> tuple[int, int]:
    """(min, max) of the gate ASG: the floor, and enough instances for the plan's concurrent
    streams at GATE_CPU_TARGET (never fewer than the floor, never more than 20)."""
    per_instance = GATE_EVENTS_PER_VCPU_S * vcpus(instance_type) * GATE_CPU_TARGET / 100
    needed = math.ceil(plan_concurrency * STREAM_EVENTS_PER_S / per_instance)
    return floor, min(20, max(floor, needed))


def gate_grace_s() -> int:
    """The gate ASG's health-check grace: twice the estimated boot, so a slow pull is not killed."""
    return 2 * GATE_BOOT_S


def gate_config(ep: EndpointConfig, variant: Variant, *, region: str, redis_url: str, keys_table: str) -> GateConfig:
    """What the gate of this endpoint runs with, as the runtime's own typed object."""
    return GateConfig(
        endpoint=ep.name,
        plan=ep.plan,
        plan_max_concurrency=ep.plan_limits.max_concurrency if ep.plan_limits else None,
        served_name=variant.served_name,
        replica_cap=ep.cap_for(variant),
        store=redis_url,
        keys=f"dynamodb:{keys_table}",
        pool=PoolConfig(
            kind="aws", variant=variant.name, asg_name=naming.replica_asg_name(ep.environment, ep.name),
            region=region, min_replicas=ep.min_replicas, max_replicas=ep.max_replicas,
            idle_timeout_s=ep.idle_timeout_s,
        ),
        hold_timeout_s=ep.hold_timeout_s,
        request_timeout_s=ep.request_timeout_s,
        stopped=ep.stopped,
    )


@dataclass
class EdgeArgs:
    endpoint: EndpointConfig
    variant: Variant
    region: str
    # The slim gate image (runtime/image, target gate).
    gate_image_uri: str
    vpc_id: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    public_subnet_ids: pulumi.Input[Sequence[str]]
    private_subnet_ids: pulumi.Input[Sequence[str]]
    keys_table_name: pulumi.Input[str]
    keys_table_arn: pulumi.Input[str]
    log_group_arn: pulumi.Input[str]
    tags: Tags
    cache_node_type: str = "cache.t4g.small"
    gate_root_gib: int = GATE_ROOT_GIB
    # The gate ASG's floor: its instances spread across this many AZs (prod).
    az_count: int = 2
    engine_port: int = DEFAULT_PORT
    boot_before: Sequence[pulumi.Resource] = ()


class Edge(pulumi.ComponentResource):
    url: pulumi.Output[str]
    alb_dns_name: pulumi.Output[str]
    gate_security_group_id: pulumi.Output[str]
    gate_asg_name: pulumi.Output[str]
    gate_role_name: pulumi.Output[str]
    config_parameter_name: pulumi.Output[str]
    user_data: str

    def __init__(self, name: str, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:edge:Edge", name, None, opts)
        ep, t = args.endpoint, args.tags
        env = ep.environment
        times = timeouts_for(ep)
        prod = env == "prod"
        account = aws.get_caller_identity_output(opts=invoke(self)).account_id

        # --- security groups: world -> ALB -> gate -> (cache, replicas) ---------------------------
        alb_sg = aws.ec2.SecurityGroup(f"{name}-alb-sg", vpc_id=args.vpc_id,
                                       description=f"warmstart ALB {env}/{ep.name}: listener ports from anywhere",
                                       tags=named(t, f"{name}-alb"), opts=child(self))
        gate_sg = aws.ec2.SecurityGroup(f"{name}-gate-sg", vpc_id=args.vpc_id,
                                        description=f"warmstart gate {env}/{ep.name}: from the ALB only",
                                        tags=named(t, f"{name}-gate"), opts=child(self))
        cache_sg = aws.ec2.SecurityGroup(f"{name}-cache-sg", vpc_id=args.vpc_id,
                                         description=f"warmstart cache {env}/{ep.name}: from the gate only",
                                         tags=named(t, f"{name}-cache"), opts=child(self))
        listener_ports = ([443, 80] if ep.domain else [80])
        for port in listener_ports:
            for family, cidr in (("v4", "0.0.0.0/0"), ("v6", "::/0")):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-alb-{port}-{family}", security_group_id=alb_sg.id, ip_protocol="tcp",
                    from_port=port, to_port=port, description=f"ALB listener {port}", tags=t, opts=child(self),
                    **({"cidr_ipv4": cidr} if family == "v4" else {"cidr_ipv6": cidr}),
                )

        def rule(kind: str, rname: str, sg: aws.ec2.SecurityGroup, port: int, description: str, **peer: Any) -> None:
            cls = aws.vpc.SecurityGroupIngressRule if kind == "in" else aws.vpc.SecurityGroupEgressRule
            cls(f"{name}-{rname}", security_group_id=sg.id, ip_protocol="tcp", from_port=port, to_port=port,
                description=description, tags=t, opts=child(self), **peer)

        gp = cloudinit.GATE_PORT
        rule("out", "alb-to-gate", alb_sg, gp, "to the gate", referenced_security_group_id=gate_sg.id)
        rule("in", "gate-from-alb", gate_sg, gp, "from the ALB", referenced_security_group_id=alb_sg.id)
        rule("out", "gate-to-cache", gate_sg, REDIS_PORT, "to the cache", referenced_security_group_id=cache_sg.id)
        rule("out", "gate-to-replicas", gate_sg, args.engine_port, "to replicas (vLLM) in the VPC",
             cidr_ipv4=args.vpc_cidr)
        rule("out", "gate-https", gate_sg, 443, "AWS APIs and the image registry (via NAT)", cidr_ipv4="0.0.0.0/0")
        rule("in", "cache-from-gate", cache_sg, REDIS_PORT, "from the gate only", referenced_security_group_id=gate_sg.id)

        # --- cache ----------------------------------------------------------------------------------
        cache_subnets = aws.elasticache.SubnetGroup(
            f"{name}-cache-subnets", subnet_ids=args.private_subnet_ids,
            description=f"warmstart cache {env}/{ep.name}", tags=t, opts=child(self),
        )
        token = random.RandomPassword(f"{name}-cache-token", length=48, special=False, opts=child(self))
        cache = aws.elasticache.ReplicationGroup(
            f"{name}-cache",
            description=f"warmstart leases and admission state {env}/{ep.name}",
            engine="valkey", engine_version="8.0", node_type=args.cache_node_type, port=REDIS_PORT,
            num_cache_clusters=2 if prod else 1, automatic_failover_enabled=prod, multi_az_enabled=prod,
            subnet_group_name=cache_subnets.name, security_group_ids=[cache_sg.id],
            transit_encryption_enabled=True, at_rest_encryption_enabled=True, auth_token=token.result,
            apply_immediately=True, tags=t, opts=child(self),
        )
        plain_url: pulumi.Output[str] = pulumi.Output.concat(
            "rediss://:", token.result, "@", cache.primary_endpoint_address, ":", str(REDIS_PORT), "/0")
        redis_url: pulumi.Output[str] = pulumi.Output.secret(plain_url)

        # --- gate config in SSM ---------------------------------------------------------------------
        param_name = naming.gate_config_parameter(env, ep.name)
        config_json = pulumi.Output.all(redis_url, args.keys_table_name).apply(
            lambda a: json.dumps(gate_config(ep, args.variant, region=args.region, redis_url=a[0],
                                             keys_table=a[1]).model_dump(mode="json"), sort_keys=True)
        )
        param = aws.ssm.Parameter(
            f"{name}-gate-config", name=param_name, type="SecureString", value=config_json,
            description=f"warmstart gate config {env}/{ep.name} (runtime.gate.config.GateConfig)",
            tags=t, opts=child(self),
        )

        # --- gate IAM -------------------------------------------------------------------------------
        # What the gate calls (runtime/gate, runtime/pool/aws.py) and nothing else. The capacity
        # fallback's grants (a new version of the replica launch template, the group pointed at it)
        # name that template, so GpuNodeGroup declares them on this role (gate_role_name).
        replica_asg = naming.replica_asg_name(env, ep.name)
        role = aws.iam.Role(f"{name}-gate-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
                            description=f"warmstart gate {env}/{ep.name}", tags=t, opts=child(self))
        aws.iam.RolePolicy(
            f"{name}-gate-policy", role=role.id,
            policy=pulumi.Output.all(param.arn, args.keys_table_arn, args.log_group_arn,
                                     asg_arn(args.region, account, replica_asg)).apply(
                lambda a: policy_document([
                    statement(["ssm:GetParameter"], [a[0]], "OwnConfig"),
                    # The gate only looks keys up (GetItem by hash); `warmstart keys` writes them.
                    statement(["dynamodb:GetItem"], [a[1]], "ReadOwnKeys"),
                    statement(["logs:CreateLogStream", "logs:PutLogEvents"], [f"{a[2]}:log-stream:*"], "OwnLogs"),
                    # Wake/scale its own replica group; tag it when it falls back to another type.
                    statement(["autoscaling:CreateOrUpdateTags", "autoscaling:SetDesiredCapacity",
                               "autoscaling:UpdateAutoScalingGroup"], [a[3]], "ScaleOwnReplicas"),
                    # Describe calls have no resource-level permissions in AWS: "*" is the only form.
                    statement(["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities",
                               "ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions",
                               "ec2:DescribeLaunchTemplates"],
                              ["*"], "DiscoverReplicas"),
                    statement(["cloudwatch:PutMetricData"], ["*"], "PublishOwnMetrics",
                              condition={"StringEquals": {"cloudwatch:namespace": metrics.NAMESPACE}}),
                    *image_pull_statements(args.gate_image_uri),
                ])
            ),
            opts=child(self),
        )
        aws.iam.RolePolicyAttachment(f"{name}-gate-ssm", role=role.name,
                                     policy_arn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
                                     opts=child(self))
        profile = aws.iam.InstanceProfile(f"{name}-gate-profile", role=role.name, tags=t, opts=child(self))

        # --- load balancer --------------------------------------------------------------------------
        alb = aws.lb.LoadBalancer(
            f"{name}-alb", load_balancer_type="application", internal=False, subnets=args.public_subnet_ids,
            security_groups=[alb_sg.id], idle_timeout=times.alb_idle_s, drop_invalid_header_fields=True,
            enable_deletion_protection=prod, tags=t, opts=child(self),
        )
        tg = aws.lb.TargetGroup(
            f"{name}-gate-tg", port=gp, protocol="HTTP", target_type="instance", vpc_id=args.vpc_id,
            load_balancing_algorithm_type="least_outstanding_requests",
            # Draining waits for the longest request a gate may be serving.
            deregistration_delay=times.deregistration_delay_s,
            # Liveness, not readiness: /healthz answers 503 while Redis fails over, and an ELB
            # health check failing on every gate at once would make the ASG replace them all.
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                path=LIVENESS_PATH, protocol="HTTP", matcher="200", interval=10, timeout=5,
                healthy_threshold=2, unhealthy_threshold=3,
            ),
            tags=t, opts=child(self),
        )
        forward = [aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=tg.arn)]
        if ep.domain:
            cert = aws.acm.Certificate(f"{name}-cert", domain_name=ep.domain, validation_method="DNS",
                                       tags=t, opts=child(self))
            cert_arn: pulumi.Output[str] = cert.arn
            if ep.hosted_zone_id:
                dvo = cert.domain_validation_options.apply(lambda o: o[0])
                record = aws.route53.Record(
                    f"{name}-cert-validation", zone_id=ep.hosted_zone_id, name=dvo.resource_record_name,
                    type=dvo.resource_record_type, records=[dvo.resource_record_value], ttl=60,
                    allow_overwrite=True, opts=child(self),
                )
                cert_arn = aws.acm.CertificateValidation(
                    f"{name}-cert", certificate_arn=cert.arn, validation_record_fqdns=[record.fqdn],
                    opts=child(self),
                ).certificate_arn
                aws.route53.Record(
                    f"{name}-dns", zone_id=ep.hosted_zone_id, name=ep.domain, type="A",
                    aliases=[aws.route53.RecordAliasArgs(name=alb.dns_name, zone_id=alb.zone_id,
                                                         evaluate_target_health=True)],
                    opts=child(self),
                )
            aws.lb.Listener(f"{name}-https", load_balancer_arn=alb.arn, port=443, protocol="HTTPS",
                            ssl_policy=TLS_POLICY, certificate_arn=cert_arn, default_actions=forward,
                            tags=t, opts=child(self))
            aws.lb.Listener(
                f"{name}-http-redirect", load_balancer_arn=alb.arn, port=80, protocol="HTTP",
                default_actions=[aws.lb.ListenerDefaultActionArgs(
                    type="redirect", redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        port="443", protocol="HTTPS", status_code="HTTP_301"))],
                tags=t, opts=child(self),
            )
            self.url = pulumi.Output.from_input(f"https://{ep.domain}/v1")
        else:
            # EndpointConfig guarantees allow_http here.
            aws.lb.Listener(f"{name}-http", load_balancer_arn=alb.arn, port=80, protocol="HTTP",
                            default_actions=forward, tags=t, opts=child(self))
            self.url = alb.dns_name.apply(lambda d: f"http://{d}/v1")

        # --- gate instances -------------------------------------------------------------------------
        self.user_data = cloudinit.render_gate(cloudinit.GateUserData(
            image_uri=args.gate_image_uri, region=args.region, log_group=naming.gate_log_group(env, ep.name),
            config_parameter=param_name, gate_env=times.gate_env(), stop_timeout_s=times.stop_timeout_s,
        ))
        ami = aws.ssm.get_parameter_output(
            name=AL2023_AMI.format(arch=instance_arch(ep.gate_instance_type)), opts=invoke(self)).value
        gate_asg_name = naming.gate_asg_name(env, ep.name)
        lt = aws.ec2.LaunchTemplate(
            f"{name}-gate-lt", image_id=ami, instance_type=ep.gate_instance_type,
            description=f"warmstart gate {env}/{ep.name}",
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            vpc_security_group_ids=[gate_sg.id],
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=2,
                instance_metadata_tags="disabled",
            ),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda",
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=args.gate_root_gib, volume_type="gp3", encrypted="true",
                    delete_on_termination="true"),
            )],
            user_data=cloudinit.encode(self.user_data),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags=named(t, gate_asg_name)),
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=named(t, gate_asg_name)),
            ],
            update_default_version=True, tags=t, opts=child(self, depends_on=[param]),
        )
        plan_concurrency = ep.plan_obj.max_concurrency
        floor = max(ep.gate_instances, args.az_count if prod else 1)
        low, high = gate_tier_size(plan_concurrency=plan_concurrency, instance_type=ep.gate_instance_type,
                                   floor=floor)
        grace = gate_grace_s()
        gate_asg = aws.autoscaling.Group(
            f"{name}-gate-asg", name=gate_asg_name, min_size=low, max_size=high, desired_capacity=low,
            vpc_zone_identifiers=args.private_subnet_ids, target_group_arns=[tg.arn],
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(id=lt.id, version=lt.latest_version.apply(str)),
            health_check_type="ELB", health_check_grace_period=grace, default_instance_warmup=grace,
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=100, max_healthy_percentage=200, skip_matching=True),
            ),
            enabled_metrics=[aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES, aws.autoscaling.Metric.GROUP_DESIRED_CAPACITY],
            tags=asg_tags(named(t, gate_asg_name)),
            opts=child(self, ignore_changes=["desiredCapacity"], depends_on=list(args.boot_before)),
        )
        # Streams cost the gate CPU (relaying SSE events), so CPU is what tracks its load.
        aws.autoscaling.Policy(
            f"{name}-gate-cpu", autoscaling_group_name=gate_asg.name, policy_type="TargetTrackingScaling",
            estimated_instance_warmup=grace,
            target_tracking_configuration=aws.autoscaling.PolicyTargetTrackingConfigurationArgs(
                target_value=GATE_CPU_TARGET,
                predefined_metric_specification=(
                    aws.autoscaling.PolicyTargetTrackingConfigurationPredefinedMetricSpecificationArgs(
                        predefined_metric_type="ASGAverageCPUUtilization")),
            ),
            opts=child(self),
        )
        self.alb_dns_name = alb.dns_name
        self.gate_security_group_id = gate_sg.id
        self.gate_asg_name = gate_asg.name
        self.gate_role_name = role.name
        self.config_parameter_name = param.name
        self.register_outputs({"url": self.url, "gate_asg_name": self.gate_asg_name})
