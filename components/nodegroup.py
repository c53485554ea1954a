"""GpuNodeGroup: the replica pool on EC2 — one vLLM per GPU instance.

- IAM: an instance role that may only write its own log group, complete its own ASG's lifecycle
  action, pull the runtime image (and be reached by Session Manager; there is no SSH).
- Network: engine port open only to the gate's security group; egress HTTPS only.
- Launch template: GPU AMI resolved from an SSM parameter at deploy time, IMDSv2 required,
  encrypted root volume, weights volume restored from the variant's snapshot (gp3 with
  throughput/IOPS raised up to what the instance type's EBS bandwidth can use, and no further:
  a stopped warm-pool volume bills them too), cloud-init that starts exactly the launcher's argv.
- ASG: min 0 (Flex) or min_replicas (Active), max from the plan, desired capacity owned by the
  scaler and the gate (ignored by Pulumi), a launch lifecycle hook that makes "InService" mean
  "vLLM answers /health", a termination lifecycle hook during which the replica drains its
  running streams (runtime/image/scripts/drain.sh), and a warm pool of exactly warm_pool_size
  Stopped instances whose volumes were pre-read.
- The gate's capacity fallback (runtime/scaling/asg.py: a new version of this launch template
  with another instance type, the group pointed at it) is granted on the gate's role here, scoped
  to this template's ARN. A MixedInstancesPolicy would do the fallback without the gate, but AWS
  refuses a warm pool on such a group ("This operation cannot be called on an Auto Scaling group
  that has a mixed instances policy", PutWarmPool).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.base import (
    Tags,
    asg_arn,
    asg_tags,
    assume_role_policy,
    child,
    image_pull_statements,
    invoke,
    named,
    policy_document,
    statement,
)
from runtime.image import cloudinit
from runtime.replica.launcher import DEFAULT_PORT
from warmstart import naming
from warmstart.spec import Variant

# Deep Learning Base OSS Nvidia Driver AMI (Amazon Linux 2023): NVIDIA driver, Docker and the
# NVIDIA container toolkit preinstalled. Resolved at `pulumi up`, so replicas of one deploy
# share one AMI and a new AMI arrives with a deploy (and an instance refresh), never silently.
GPU_AMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
LAUNCH_HOOK = "warmstart-launch"
# Scale-in, stop and instance refresh wait on this hook while drain.sh lets running streams end.
TERMINATE_HOOK = "warmstart-terminate"
# The hook's heartbeat beyond the drain bound: drain.sh's polls, stopping vLLM, the API call.
DRAIN_MARGIN_S = 300


# gp3: 3,000 IOPS and 125 MiB/s are included; "The maximum ratio of provisioned throughput to
# provisioned IOPS is .25 MiB/s per IOPS"; at most 16,000 IOPS and 1,000 MiB/s.
GP3_BASE_IOPS = 3000
GP3_BASE_MIBPS = 125
GP3_MIBPS_PER_IOPS = 0.25
GP3_MAX_IOPS = 16000
GP3_MAX_MIBPS = 1000


def replica_role_name(environment: str, endpoint: str) -> str:
    """Named, not auto-named: the gate's policy may pass exactly this role (capacity fallback)."""
    return f"{naming.prefix(environment, endpoint)}-replica"


ROOT_DEVICE = "/dev/xvda"


def refresh_preferences(min_size: int) -> tuple[int, int]:
    """(MinHealthyPercentage, MaxHealthyPercentage) of an instance refresh: launch before terminate
    (a serving replica leaves only once its replacement is InService, then drains). AWS
    (RefreshPreferences.MaxHealthyPercentage): "the difference between them cannot be greater
    than 100"; 100/200 is the widest pair that keeps full capacity."""
    del min_size  # the same for Flex (min 0) and Active: a woken Flex replica serves too
    return 100, 200


def warm_pool_bounds(warm_pool_size: int) -> tuple[int, int]:
    """(MinSize, MaxGroupPreparedCapacity) of the warm pool. PutWarmPool: "Only when
    MaxGroupPreparedCapacity and MinSize are set to the same value does the warm pool have an
    absolute size"; anything larger makes AWS keep MaxGroupPreparedCapacity - desired instances
    prepared, each a booted, pre-read, stopped GPU instance with a billed volume."""
    return warm_pool_size, warm_pool_size


def weights_volume_performance(*, wanted_mibps: int, wanted_iops: int, instance_max_mbps: float | None,
                               instance_max_iops: int | None) -> tuple[int, int]:
    """(throughput MiB/s, IOPS) of the weights volume: what was asked, capped by what the instance
    type's EBS bandwidth can use (DescribeInstanceTypes EbsInfo.EbsOptimizedInfo
    MaximumThroughputInMBps / MaximumIops: a load reads at most that fast, and provisioned
    performance above gp3's included 3,000 IOPS / 125 MiB/s is billed on every stopped warm-pool
    volume); never below the included figures, IOPS enough for the throughput (0.25 MiB/s per IOPS)."""
    mibps = min(wanted_mibps, GP3_MAX_MIBPS)
    if instance_max_mbps:
        mibps = min(mibps, math.floor(instance_max_mbps * 1e6 / 2**20))
    mibps = max(GP3_BASE_MIBPS, mibps)
    iops = min(max(wanted_iops, math.ceil(mibps / GP3_MIBPS_PER_IOPS)), GP3_MAX_IOPS)
    if instance_max_iops:
        iops = min(iops, instance_max_iops)
    iops = max(GP3_BASE_IOPS, iops)
    mibps = max(GP3_BASE_MIBPS, min(mibps, math.floor(iops * GP3_MIBPS_PER_IOPS)))
    return mibps, iops


@dataclass
class GpuNodeGroupArgs:
    environment: str
    endpoint: str
    region: str
    variant: Variant
    instance_type: str
    image_uri: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    gate_security_group_id: pulumi.Input[str]
    snapshot_id: pulumi.Input[str]
    log_group_arn: pulumi.Input[str]
    min_size: int
    max_size: int
    warm_pool_size: int
    tags: Tags
    volume_initialization_rate: int | None = None
    root_volume_gib: int = 100
    weights_iops: int = 4000
    weights_throughput_mibps: int = 1000
    health_check_grace_s: int = 900
    ready_wait_s: int = 1800
    # How long a leaving replica lets its running requests finish (the endpoint's request timeout).
    drain_timeout_s: int = 600
    port: int = DEFAULT_PORT
    ami_parameter: str = GPU_AMI_PARAMETER
    # The gate's role: it gets the capacity fallback's grants on this group's launch template.
    gate_role_name: pulumi.Input[str] | None = None
    boot_before: Sequence[pulumi.Resource] = ()


class GpuNodeGroup(pulumi.ComponentResource):
    asg_name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]
    user_data: str

    def __init__(self, name: str, args: GpuNodeGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:nodegroup:GpuNodeGroup", name, None, opts)
        env, ep, t = args.environment, args.endpoint, args.tags
        asg_name = naming.replica_asg_name(env, ep)
        account = aws.get_caller_identity_output(opts=invoke(self)).account_id

        role = aws.iam.Role(f"{name}-role", name=replica_role_name(env, ep),
                            assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
                            description=f"warmstart replica {env}/{ep}", tags=t, opts=child(self))
        aws.iam.RolePolicy(
            f"{name}-policy", role=role.id,
            policy=pulumi.Output.all(args.log_group_arn, asg_arn(args.region, account, asg_name), account).apply(
                lambda a: policy_document([
                    statement(["logs:CreateLogStream", "logs:PutLogEvents"], [f"{a[0]}:log-stream:*"], "OwnLogs"),
                    # Heartbeats at each launch phase (replica-boot.sh, warm-pool-hook.sh), the
                    # completion of the launch and termination hooks.
                    statement(["autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"],
                              [a[1]], "OwnLifecycleHook"),
                    # Only the phase tag, only on this endpoint's instances.
                    statement(["ec2:CreateTags"], [f"arn:aws:ec2:{args.region}:{a[2]}:instance/*"], "OwnPhaseTag",
                              condition={
                                  "StringEquals": {"aws:ResourceTag/endpoint": ep, "aws:ResourceTag/environment": env},
                                  "ForAllValues:StringEquals": {"aws:TagKeys": ["warmstart:phase"]},
                              }),
                    *image_pull_statements(args.image_uri),
                ])
            ),
            opts=child(self),
        )
        # Session Manager instead of SSH: no key pair, no port 22.
        aws.iam.RolePolicyAttachment(
            f"{name}-ssm", role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore", opts=child(self),
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=t, opts=child(self))

        sg = aws.ec2.SecurityGroup(
            f"{name}-sg", vpc_id=args.vpc_id, description=f"warmstart replicas {env}/{ep}: engine port from the gate only",
            tags=named(t, f"{name}-sg"), opts=child(self),
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-engine-from-gate", security_group_id=sg.id, ip_protocol="tcp", from_port=args.port,
            to_port=args.port, referenced_security_group_id=args.gate_security_group_id,
            description="vLLM, from the gate only", tags=t, opts=child(self),
        )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-https-out", security_group_id=sg.id, ip_protocol="tcp", from_port=443, to_port=443,
            cidr_ipv4="0.0.0.0/0", description="AWS APIs and the image registry (via NAT)", tags=t,
            opts=child(self),
        )

        self.user_data = cloudinit.render_replica(cloudinit.ReplicaUserData(
            variant=args.variant, image_uri=args.image_uri, region=args.region,
            log_group=naming.replica_log_group(env, ep), asg_name=asg_name, launch_hook_name=LAUNCH_HOOK,
            port=args.port, ready_wait_s=args.ready_wait_s,
            terminate_hook_name=TERMINATE_HOOK, drain_timeout_s=args.drain_timeout_s,
        ))
        ami = aws.ssm.get_parameter_output(name=args.ami_parameter, opts=invoke(self)).value
        ebs = aws.ec2.get_instance_type_output(instance_type=args.instance_type, opts=invoke(self))
        perf = pulumi.Output.all(ebs.ebs_performance_maximum_throughput, ebs.ebs_performance_maximum_iops).apply(
            lambda a: weights_volume_performance(
                wanted_mibps=args.weights_throughput_mibps, wanted_iops=args.weights_iops,
                instance_max_mbps=a[0], instance_max_iops=a[1]))
        lt = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            name=naming.replica_launch_template_name(env, ep),
            description=f"warmstart replica {env}/{ep}: {args.variant.name} on {args.instance_type}",
            image_id=ami,
            instance_type=args.instance_type,
            iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=profile.arn),
            vpc_security_group_ids=[sg.id],
            ebs_optimized="true",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                instance_metadata_tags="disabled",
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=ROOT_DEVICE,
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.root_volume_gib, volume_type="gp3", encrypted="true",
                        delete_on_termination="true",
                    ),
                ),
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name=cloudinit.WEIGHTS_DEVICE,
                    # Encryption comes from the snapshot (WeightCache checks it is encrypted).
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        snapshot_id=args.snapshot_id, volume_size=args.variant.weights_size_gib,
                        volume_type="gp3", iops=perf.apply(lambda p: p[1]), throughput=perf.apply(lambda p: p[0]),
                        volume_initialization_rate=args.volume_initialization_rate,
                        delete_on_termination="true",
                    ),
                ),
            ],
            user_data=cloudinit.encode(self.user_data),
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags=named(t, asg_name)),
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume", tags=named(t, asg_name)),
            ],
            update_default_version=True,
            tags=t,
            opts=child(self),
        )

        warm_pool = None
        if args.warm_pool_size > 0:
            pool_min, pool_max = warm_pool_bounds(args.warm_pool_size)
            warm_pool = aws.autoscaling.GroupWarmPoolArgs(
                pool_state="Stopped", min_size=pool_min, max_group_prepared_capacity=pool_max,
                instance_reuse_policy=aws.autoscaling.GroupWarmPoolInstanceReusePolicyArgs(reuse_on_scale_in=True),
            )
        asg = aws.autoscaling.Group(
            f"{name}-asg",
            name=asg_name,
            min_size=args.min_size,
            max_size=args.max_size,
            desired_capacity=args.min_size,
            vpc_zone_identifiers=args.subnet_ids,
            launch_template=aws.autoscaling.GroupLaunchTemplateArgs(id=lt.id, version=lt.latest_version.apply(str)),
            health_check_type="EC2",
            health_check_grace_period=args.health_check_grace_s,
            default_instance_warmup=args.health_check_grace_s,
            # A GPU may not be available right now; Pulumi must not block waiting for one.
            wait_for_capacity_timeout="0",
            # The heartbeat bounds ONE launch phase (pull, pre-read, engine warm-up): the boot
            # scripts record a heartbeat between phases.
            initial_lifecycle_hooks=[aws.autoscaling.GroupInitialLifecycleHookArgs(
                name=LAUNCH_HOOK, lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
                default_result="ABANDON", heartbeat_timeout=args.ready_wait_s + 600,
            )],
            warm_pool=warm_pool,
            instance_refresh=aws.autoscaling.GroupInstanceRefreshArgs(
                strategy="Rolling",
                preferences=aws.autoscaling.GroupInstanceRefreshPreferencesArgs(
                    min_healthy_percentage=refresh_preferences(args.min_size)[0],
                    max_healthy_percentage=refresh_preferences(args.min_size)[1],
                    skip_matching=True, scale_in_protected_instances="Ignore", standby_instances="Ignore",
                ),
            ),
            enabled_metrics=[aws.autoscaling.Metric.GROUP_DESIRED_CAPACITY,
                             aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES,
                             aws.autoscaling.Metric.GROUP_PENDING_INSTANCES,
                             aws.autoscaling.Metric.GROUP_TOTAL_INSTANCES,
                             aws.autoscaling.Metric.WARM_POOL_WARMED_CAPACITY],
            tags=asg_tags(named(t, asg_name)),
            # Desired capacity belongs to the scaling policies and the gate's wake-ups; a deploy
            # must never reset it (that would kill serving replicas or undo a wake).
            opts=child(self, ignore_changes=["desiredCapacity"], depends_on=list(args.boot_before)),
        )
        # Its own resource, not an initial hook: initial hooks apply only when a group is created,
        # and groups deployed before this hook existed need it too.
        aws.autoscaling.LifecycleHook(
            f"{name}-terminate-hook", name=TERMINATE_HOOK, autoscaling_group_name=asg.name,
            lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
            # If drain.sh never answers, the replica still goes once the heartbeat runs out.
            default_result="CONTINUE", heartbeat_timeout=args.drain_timeout_s + DRAIN_MARGIN_S,
            opts=child(self),
        )
        if args.gate_role_name is not None:
            self._grant_fallback(name, args, lt, role, account)
        self.asg_name = asg.name
        self.security_group_id = sg.id
        self.launch_template_id = lt.id
        self.register_outputs({"asg_name": self.asg_name, "launch_template_id": self.launch_template_id})

    def _grant_fallback(self, name: str, args: GpuNodeGroupArgs, lt: aws.ec2.LaunchTemplate, role: aws.iam.Role,
                        account: pulumi.Output[str]) -> None:
        """The gate's capacity fallback, on exactly this group's launch template: a new version of it
        (CreateLaunchTemplateVersion), and the group pointed at that version (UpdateAutoScalingGroup,
        granted in Edge), which AWS only allows a caller that may launch from the template: "An IAM
        user or role that creates or updates an Auto Scaling group using a launch template must have
        permission to use the ec2:RunInstances action", plus ec2:CreateTags for the template's tag
        specifications and iam:PassRole for its instance profile."""
        region = args.region
        aws.iam.RolePolicy(
            f"{name}-gate-fallback", role=args.gate_role_name,
            policy=pulumi.Output.all(lt.arn, role.arn, account).apply(lambda a: policy_document([
                statement(["ec2:CreateLaunchTemplateVersion"], [a[0]], "FallbackOwnTemplate"),
                # Every resource a launch from it touches; amazon-owned AMIs carry no account.
                statement(["ec2:RunInstances"], [
                    a[0], *[f"arn:aws:ec2:{region}:{a[2]}:{kind}/*" for kind in
                            ("instance", "volume", "network-interface", "subnet", "security-group", "snapshot")],
                    f"arn:aws:ec2:{region}::image/*", f"arn:aws:ec2:{region}::snapshot/*",
                ], "LaunchFromOwnTemplateOnly", condition={"ArnEquals": {"ec2:LaunchTemplate": a[0]}}),
                statement(["ec2:CreateTags"], [f"arn:aws:ec2:{region}:{a[2]}:instance/*",
                                               f"arn:aws:ec2:{region}:{a[2]}:volume/*"],
                          "TagAtLaunchOnly", condition={"StringEquals": {"ec2:CreateAction": "RunInstances"}}),
                statement(["iam:PassRole"], [a[1]], "PassReplicaRole",
                          condition={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
            ])),
            opts=child(self),
        )
