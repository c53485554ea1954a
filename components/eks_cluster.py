"""EksCluster: an EKS cluster (created, or an existing one adopted by name) with the endpoint's
node groups and the cluster add-ons its workloads rely on.

    aws.eks.Cluster (or get_cluster)     API auth mode, secrets encrypted with a KMS key, private endpoint
    ├── add-ons: vpc-cni (NetworkPolicy enforcement on), eks-pod-identity-agent, coredns, kube-proxy
    ├── NodeGroup system   CPU nodes for the gate, CoreDNS and the controllers (>= gate_instances)
    ├── NodeGroup gpu      min 0; launch template mounts the variant's weights snapshot (WeightCache's
    │                      snapshot id) at /opt/warmstart/weights; label + taint nvidia.com/gpu;
    │                      the ASG carries cluster-autoscaler node-template tags so 0 -> 1 works
    ├── kubernetes.Provider (kubeconfig from the cluster; token from `aws eks get-token`)
    ├── DaemonSet nvidia-device-plugin (GPU nodes only)
    ├── helm Release cluster-autoscaler, aws-load-balancer-controller (Pod Identity roles)
    └── PodIdentityAssociation for the gate (its DynamoDB key table only)

Cluster Autoscaler rather than Karpenter: the GPU nodes come from a launch template exactly like
the EC2 substrate's (same weights volume, same IMDSv2/encryption rules the policies check), a
managed node group at min 0 is the whole scale-to-zero story, and the autoscaler needs no CRDs,
SQS queue or EC2NodeClass. Karpenter would launch faster and try fallback instance types in one
pool; see docs/eks.md.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
from pulumi_kubernetes.apps.v1 import DaemonSetSpecArgs, DaemonSetUpdateStrategyArgs
from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ContainerArgs,
    EnvVarArgs,
    HostPathVolumeSourceArgs,
    PodSecurityContextArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ResourceRequirementsArgs,
    SeccompProfileArgs,
    SecurityContextArgs,
    TolerationArgs,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.helm.v3 import ReleaseArgs, RepositoryOptsArgs
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs

from components.base import (
    Tags,
    assume_role_policy,
    child,
    image_pull_statements,
    instance_arch,
    invoke,
    named,
    policy_document,
    statement,
)
from components.eks_workloads import GATE, GPU_NODE_LABEL, GPU_TAINT_KEY, RUN_AS_UID, VARIANT_NODE_LABEL
from runtime.image.cloudinit import CACHE_DIR, WEIGHTS_DEVICE, WEIGHTS_LABEL, WEIGHTS_MOUNT
from warmstart import naming
from warmstart.spec import GPU_INSTANCES, Variant

KUBERNETES_VERSION = "1.33"
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
CLUSTER_AUTOSCALER_CHART = ("cluster-autoscaler", "9.46.6", "https://kubernetes.github.io/autoscaler")
LBC_CHART = ("aws-load-balancer-controller", "1.13.2", "https://aws.github.io/eks-charts")
CA_TEMPLATE = "k8s.io/cluster-autoscaler/node-template"
ROOT_DEVICE = "/dev/xvda"  # AL2023 EKS AMIs


@dataclass
class EksClusterArgs:
    environment: str
    endpoint: str
    region: str
    variant: Variant
    instance_type: str
    image_uri: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[Sequence[str]]
    public_subnet_ids: pulumi.Input[Sequence[str]]
    snapshot_id: pulumi.Input[str]
    keys_table_arn: pulumi.Input[str]
    max_replicas: int
    min_replicas: int = 0
    system_instance_type: str = "m7i.large"
    system_nodes: int = 1
    existing_cluster_name: str | None = None
    kubeconfig: pulumi.Input[str] | None = None  # an adopted cluster's own kubeconfig (else `aws eks get-token`)
    kubernetes_version: str = KUBERNETES_VERSION
    public_api_cidrs: Sequence[str] = ()
    tags: Tags = field(default_factory=dict)


def gpu_node_user_data() -> str:
    """A MIME part run before nodeadm on the AL2023 NVIDIA AMI: mount the weights volume read-write
    at the path the vLLM pods' hostPath volumes use, by filesystem label (Nitro renames devices),
    and give the compile cache to the unprivileged pod user."""
    script = "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        f"mkdir -p {WEIGHTS_MOUNT}",
        "for _ in $(seq 1 60); do",
        f"  [ -e /dev/disk/by-label/{WEIGHTS_LABEL} ] && break; sleep 1",
        "done",
        f"mount -o noatime,nodev,nosuid LABEL={WEIGHTS_LABEL} {WEIGHTS_MOUNT}",
        f"echo 'LABEL={WEIGHTS_LABEL} {WEIGHTS_MOUNT} ext4 noatime,nodev,nosuid,nofail 0 2' >> /etc/fstab",
        f"mkdir -p {CACHE_DIR} && chown -R {RUN_AS_UID}:{RUN_AS_UID} {CACHE_DIR}",
        "",
    ])
    boundary = "==WARMSTART=="
    return "\n".join([
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        f"--{boundary}",
        'Content-Type: text/x-shellscript; charset="us-ascii"',
        "",
        script,
        f"--{boundary}--",
        "",
    ])


def autoscaler_node_template_tags(variant: Variant, instance_type: str) -> dict[str, str]:
    """What the cluster autoscaler must know about a node of an empty group to scale it 0 -> 1
    (it cannot look at a node that does not exist): labels, the taint, the GPU count."""
    gpus = GPU_INSTANCES[instance_type].gpu_count
    return {
        f"{CA_TEMPLATE}/label/{GPU_NODE_LABEL}": "true",
        f"{CA_TEMPLATE}/label/{VARIANT_NODE_LABEL}": variant.name,
        f"{CA_TEMPLATE}/label/node.kubernetes.io/instance-type": instance_type,
        f"{CA_TEMPLATE}/taint/{GPU_TAINT_KEY}": "true:NoSchedule",
        f"{CA_TEMPLATE}/resources/nvidia.com/gpu": str(gpus),
    }


def gpu_nodes_needed(variant: Variant, instance_type: str, replicas: int) -> int:
    per_node = max(GPU_INSTANCES[instance_type].gpu_count // variant.engine.tensor_parallel_size, 1)
    return -(-replicas // per_node)


def _kubeconfig(name: str, endpoint: Any, ca: Any, region: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": endpoint or "", "certificate-authority-data": ca or ""}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region, "--output", "json"],
        }}}],
    })


def _first_ca(ca: Any) -> str:
    if isinstance(ca, list) and ca:
        ca = ca[0]
    if isinstance(ca, dict):
        return str(ca.get("data") or "")
    return str(getattr(ca, "data", "") or "")


def _asg_name(resources: Any) -> str:
    try:
        first = resources[0]
        groups = first["autoscaling_groups"] if isinstance(first, dict) else first.autoscaling_groups
        g = groups[0]
        return str(g["name"] if isinstance(g, dict) else g.name)
    except (TypeError, IndexError, KeyError, AttributeError):
        return ""


def cluster_autoscaler_policy(cluster_name: str) -> str:
    return policy_document([
        # Describe* calls have no resource-level permissions: AWS requires "*".
        statement([
            "autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
            "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
            "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements",
        ], ["*"], "Discover"),
        statement(["eks:DescribeNodegroup"], [f"arn:aws:eks:*:*:nodegroup/{cluster_name}/*/*"], "OwnNodegroups"),
        # Writes only on groups EKS tagged as this cluster's.
        statement(
            ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
            ["arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*"], "ScaleOwnGroups",
            {"StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}},
        ),
    ])


_ELB = "arn:aws:elasticloadbalancing:*:*"


def load_balancer_controller_policy() -> str:
    """The AWS Load Balancer Controller's permissions for ALBs with IP targets (WAF, Shield and
    Cognito are switched off in its values), writes limited to what it tagged itself."""
    owned = {"Null": {"aws:ResourceTag/elbv2.k8s.aws/cluster": "false"}}
    return policy_document([
        # Describe* calls have no resource-level permissions: AWS requires "*".
        statement([
            "ec2:DescribeAccountAttributes", "ec2:DescribeAddresses", "ec2:DescribeAvailabilityZones",
            "ec2:DescribeInternetGateways", "ec2:DescribeVpcs", "ec2:DescribeVpcPeeringConnections",
            "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstances",
            "ec2:DescribeNetworkInterfaces", "ec2:DescribeTags", "ec2:DescribeRouteTables",
            "ec2:DescribeIpamPools", "ec2:DescribeCoipPools",
            "elasticloadbalancing:DescribeLoadBalancers", "elasticloadbalancing:DescribeLoadBalancerAttributes",
            "elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeListenerCertificates",
            "elasticloadbalancing:DescribeSSLPolicies", "elasticloadbalancing:DescribeRules",
            "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetGroupAttributes",
            "elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTags",
            "elasticloadbalancing:DescribeTrustStores", "elasticloadbalancing:DescribeListenerAttributes",
            "elasticloadbalancing:DescribeCapacityReservation", "acm:ListCertificates",
        ], ["*"], "Discover"),
        statement(["acm:DescribeCertificate"], ["arn:aws:acm:*:*:certificate/*"], "ReadCertificates"),
        statement(["ec2:GetSecurityGroupsForVpc"], ["arn:aws:ec2:*:*:vpc/*"], "VpcSecurityGroups"),
        statement(["iam:CreateServiceLinkedRole"], [
            "arn:aws:iam::*:role/aws-service-role/elasticloadbalancing.amazonaws.com/"
            "AWSServiceRoleForElasticLoadBalancing"], "ElbServiceLinkedRole",
            {"StringEquals": {"iam:AWSServiceName": "elasticloadbalancing.amazonaws.com"}}),
        statement(["ec2:CreateSecurityGroup"], ["arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:vpc/*"],
                  "CreateSecurityGroup"),
        statement(["ec2:CreateTags"], ["arn:aws:ec2:*:*:security-group/*"], "TagNewSecurityGroup",
                  {"StringEquals": {"ec2:CreateAction": "CreateSecurityGroup"},
                   "Null": {"aws:RequestTag/elbv2.k8s.aws/cluster": "false"}}),
        statement(["ec2:AuthorizeSecurityGroupIngress", "ec2:RevokeSecurityGroupIngress",
                   "ec2:DeleteSecurityGroup", "ec2:CreateTags", "ec2:DeleteTags"],
                  ["arn:aws:ec2:*:*:security-group/*"], "OwnSecurityGroups", owned),
        statement(["elasticloadbalancing:CreateLoadBalancer", "elasticloadbalancing:CreateTargetGroup"],
                  [f"{_ELB}:loadbalancer/app/*/*", f"{_ELB}:targetgroup/*/*"], "CreateTagged",
                  {"Null": {"aws:RequestTag/elbv2.k8s.aws/cluster": "false"}}),
        statement(["elasticloadbalancing:ModifyLoadBalancerAttributes", "elasticloadbalancing:SetIpAddressType",
                   "elasticloadbalancing:SetSecurityGroups", "elasticloadbalancing:SetSubnets",
                   "elasticloadbalancing:DeleteLoadBalancer", "elasticloadbalancing:CreateListener"],
                  [f"{_ELB}:loadbalancer/app/*/*"], "OwnLoadBalancers", owned),
        statement(["elasticloadbalancing:ModifyTargetGroup", "elasticloadbalancing:ModifyTargetGroupAttributes",
                   "elasticloadbalancing:DeleteTargetGroup"],
                  [f"{_ELB}:targetgroup/*/*"], "OwnTargetGroups", owned),
        # Listeners and rules of those load balancers (they carry no tag condition in AWS's own policy).
        statement(["elasticloadbalancing:DeleteListener", "elasticloadbalancing:ModifyListener",
                   "elasticloadbalancing:ModifyListenerAttributes", "elasticloadbalancing:AddListenerCertificates",
                   "elasticloadbalancing:RemoveListenerCertificates", "elasticloadbalancing:CreateRule"],
                  [f"{_ELB}:listener/app/*/*/*"], "Listeners"),
        statement(["elasticloadbalancing:DeleteRule", "elasticloadbalancing:ModifyRule"],
                  [f"{_ELB}:listener-rule/app/*/*/*/*"], "Rules"),
        statement(["elasticloadbalancing:AddTags", "elasticloadbalancing:RemoveTags"],
                  [f"{_ELB}:loadbalancer/app/*/*", f"{_ELB}:targetgroup/*/*", f"{_ELB}:listener/app/*/*/*",
                   f"{_ELB}:listener-rule/app/*/*/*/*"], "Tags"),
        statement(["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"],
                  [f"{_ELB}:targetgroup/*/*"], "Targets"),
    ])


class EksCluster(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    provider: k8s.Provider
    gpu_node_group_name: pulumi.Output[str]
    gpu_asg_name: pulumi.Output[str]
    gpu_launch_template_id: pulumi.Output[str]
    user_data: str

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("warmstart:eks:Cluster", name, None, opts)
        t, env, ep = args.tags, args.environment, args.endpoint
        prefix = naming.prefix(env, ep)

        if args.existing_cluster_name is not None:
            found = aws.eks.get_cluster_output(name=args.existing_cluster_name, opts=invoke(self))
            cluster_name: pulumi.Output[str] = pulumi.Output.from_input(args.existing_cluster_name)
            api_endpoint = found.endpoint
            ca_data = found.certificate_authorities.apply(_first_ca)
            cluster_resource: list[pulumi.Resource] = []
        else:
            cluster = self._create_cluster(name, prefix, args)
            cluster_name = cluster.name
            api_endpoint = cluster.endpoint
            ca_data = cluster.certificate_authority.apply(_first_ca)
            cluster_resource = [cluster]

        # -- nodes -------------------------------------------------------------------------
        node_role = aws.iam.Role(f"{name}-node-role", assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
                                 description=f"warmstart EKS nodes {env}/{ep}", tags=t, opts=child(self))
        for i, policy in enumerate([
            "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
            "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
            "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",  # Session Manager, no SSH
        ]):
            aws.iam.RolePolicyAttachment(f"{name}-node-{i}", role=node_role.name, policy_arn=policy,
                                         opts=child(self))
        pulls = image_pull_statements(args.image_uri)
        if pulls:
            aws.iam.RolePolicy(f"{name}-node-pull", role=node_role.id, policy=policy_document(pulls),
                               opts=child(self))
        else:
            aws.iam.RolePolicyAttachment(f"{name}-node-ecr", role=node_role.name, opts=child(self),
                                         policy_arn="arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly")

        def launch_template(lt_name: str, devices: list[aws.ec2.LaunchTemplateBlockDeviceMappingArgs],
                            user_data: str | None, what: str) -> aws.ec2.LaunchTemplate:
            return aws.ec2.LaunchTemplate(
                f"{name}-{lt_name}-lt",
                name=f"{prefix}-eks-{lt_name}",
                description=f"warmstart EKS {what} {env}/{ep}",
                metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                    # Hop limit 1: pods cannot reach the node's credentials (they use Pod Identity).
                    http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                    instance_metadata_tags="disabled",
                ),
                block_device_mappings=devices,
                user_data=base64.b64encode(user_data.encode()).decode() if user_data else None,
                tag_specifications=[
                    aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance",
                                                               tags=named(t, f"{prefix}-eks-{lt_name}")),
                    aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="volume",
                                                               tags=named(t, f"{prefix}-eks-{lt_name}")),
                ],
                update_default_version=True,
                tags=t,
                opts=child(self),
            )

        def root(gib: int) -> aws.ec2.LaunchTemplateBlockDeviceMappingArgs:
            return aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=ROOT_DEVICE,
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=gib, volume_type="gp3", encrypted="true", delete_on_termination="true"),
            )

        sys_lt = launch_template("system", [root(50)], None, "system nodes")
        arch = instance_arch(args.system_instance_type)
        system = aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster_name,
            node_group_name=f"{prefix}-system",
            node_role_arn=node_role.arn,
            subnet_ids=args.private_subnet_ids,
            ami_type="AL2023_ARM_64_STANDARD" if arch == "arm64" else "AL2023_x86_64_STANDARD",
            instance_types=[args.system_instance_type],
            capacity_type="ON_DEMAND",
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=sys_lt.id, version=sys_lt.latest_version.apply(str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.system_nodes, desired_size=args.system_nodes, max_size=args.system_nodes + 2),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels={"warmstart.dev/role": "system"},
            tags=named(t, f"{prefix}-system"),
            opts=child(self, depends_on=cluster_resource, ignore_changes=["scalingConfig.desiredSize"]),
        )

        self.user_data = gpu_node_user_data()
        gpu_lt = launch_template("gpu", [
            root(100),
            aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=WEIGHTS_DEVICE,
                # Encryption comes from the snapshot (WeightCache checks it is encrypted).
                ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    snapshot_id=args.snapshot_id, volume_size=args.variant.weights_size_gib, volume_type="gp3",
                    iops=6000, throughput=500, delete_on_termination="true"),
            ),
        ], self.user_data, f"GPU nodes ({args.variant.name} on {args.instance_type})")
        max_nodes = max(gpu_nodes_needed(args.variant, args.instance_type, args.max_replicas), 1)
        min_nodes = gpu_nodes_needed(args.variant, args.instance_type, args.min_replicas)
        gpu = aws.eks.NodeGroup(
            f"{name}-gpu",
            cluster_name=cluster_name,
            node_group_name=f"{prefix}-gpu",
            node_role_arn=node_role.arn,
            subnet_ids=args.private_subnet_ids,
            ami_type="AL2023_x86_64_NVIDIA",
            instance_types=[args.instance_type],
            capacity_type="ON_DEMAND",
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=gpu_lt.id, version=gpu_lt.latest_version.apply(str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=min_nodes, desired_size=min_nodes, max_size=max_nodes),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels={GPU_NODE_LABEL: "true", VARIANT_NODE_LABEL: args.variant.name},
            taints=[aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")],
            tags=named(t, f"{prefix}-gpu"),
            # The cluster autoscaler owns the size between min and max; a deploy must not reset it.
            opts=child(self, depends_on=cluster_resource, ignore_changes=["scalingConfig.desiredSize"]),
        )
        self.gpu_asg_name = gpu.resources.apply(_asg_name)
        # Managed node groups do not copy their tags to the ASG; the autoscaler reads the ASG's.
        for key, value in autoscaler_node_template_tags(args.variant, args.instance_type).items():
            kind, _, what = key.removeprefix(CA_TEMPLATE + "/").partition("/")
            slug = f"{kind}-{what.replace('/', '-').replace('.', '-')}"
            aws.autoscaling.Tag(
                f"{name}-ca-{slug}",
                autoscaling_group_name=self.gpu_asg_name,
                tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
                opts=child(self),
            )

        # -- Kubernetes --------------------------------------------------------------------
        kubeconfig: pulumi.Input[str] = args.kubeconfig or pulumi.Output.all(cluster_name, api_endpoint, ca_data).apply(
            lambda a: _kubeconfig(str(a[0]), a[1], a[2], args.region))
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=kubeconfig, enable_server_side_apply=True,
            opts=child(self, depends_on=[*cluster_resource, system]),
        )
        kopts = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[system])

        k8s.apps.v1.DaemonSet(
            f"{name}-nvidia-device-plugin",
            metadata=ObjectMetaArgs(name="nvidia-device-plugin", namespace="kube-system",
                                    labels={"app.kubernetes.io/name": "nvidia-device-plugin"}),
            spec=DaemonSetSpecArgs(
                selector=LabelSelectorArgs(match_labels={"app.kubernetes.io/name": "nvidia-device-plugin"}),
                update_strategy=DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels={"app.kubernetes.io/name": "nvidia-device-plugin"}),
                    spec=PodSpecArgs(
                        priority_class_name="system-node-critical",
                        automount_service_account_token=False,
                        security_context=PodSecurityContextArgs(
                            seccomp_profile=SeccompProfileArgs(type="RuntimeDefault")),
                        node_selector={GPU_NODE_LABEL: "true"},
                        tolerations=[TolerationArgs(key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")],
                        containers=[ContainerArgs(
                            name="nvidia-device-plugin",
                            image=DEVICE_PLUGIN_IMAGE,
                            image_pull_policy="Always",
                            env=[EnvVarArgs(name="FAIL_ON_INIT_ERROR", value="false")],
                            resources=ResourceRequirementsArgs(
                                requests={"cpu": "50m", "memory": "64Mi"},
                                limits={"cpu": "200m", "memory": "128Mi"},
                            ),
                            # Registers a socket with the kubelet under a root-owned host path.
                            security_context=SecurityContextArgs(
                                allow_privilege_escalation=False, read_only_root_filesystem=True,
                                capabilities=CapabilitiesArgs(drop=["ALL"]),
                                seccomp_profile=SeccompProfileArgs(type="RuntimeDefault"),
                            ),
                            volume_mounts=[VolumeMountArgs(name="device-plugin",
                                                           mount_path="/var/lib/kubelet/device-plugins")],
                        )],
                        volumes=[VolumeArgs(name="device-plugin", host_path=HostPathVolumeSourceArgs(
                            path="/var/lib/kubelet/device-plugins", type="Directory"))],
                    ),
                ),
            ),
            opts=kopts,
        )

        def pod_role(role_name: str, namespace: pulumi.Input[str], sa: str,
                     policy: pulumi.Input[str]) -> aws.iam.Role:
            role = aws.iam.Role(
                f"{name}-{role_name}-role",
                assume_role_policy=policy_document([{
                    "Sid": "PodIdentity", "Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession"],
                    "Principal": {"Service": "pods.eks.amazonaws.com"},
                }]),
                description=f"warmstart {role_name} {env}/{ep} (EKS Pod Identity)", tags=t, opts=child(self),
            )
            aws.iam.RolePolicy(f"{name}-{role_name}-policy", role=role.id, policy=policy, opts=child(self))
            aws.eks.PodIdentityAssociation(
                f"{name}-{role_name}-identity", cluster_name=cluster_name, namespace=namespace,
                service_account=sa, role_arn=role.arn, tags=t, opts=child(self, depends_on=cluster_resource),
            )
            return role

        pod_role("gate", prefix, GATE, pulumi.Output.from_input(args.keys_table_arn).apply(
            lambda arn: policy_document([statement(
                ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                [arn, f"{arn}/index/*"], "OwnKeys")])))
        ca_role = pod_role("cluster-autoscaler", "kube-system", "cluster-autoscaler",
                           cluster_name.apply(cluster_autoscaler_policy))
        lbc_role = pod_role("lb-controller", "kube-system", "aws-load-balancer-controller",
                            load_balancer_controller_policy())

        chart, version, repo = CLUSTER_AUTOSCALER_CHART
        k8s.helm.v3.Release(
            f"{name}-cluster-autoscaler",
            ReleaseArgs(
                name="cluster-autoscaler", chart=chart, version=version, namespace="kube-system",
                repository_opts=RepositoryOptsArgs(repo=repo),
                values={
                    "cloudProvider": "aws", "awsRegion": args.region,
                    "autoDiscovery": {"clusterName": cluster_name},
                    "rbac": {"serviceAccount": {"create": True, "name": "cluster-autoscaler"}},
                    "nodeSelector": {"warmstart.dev/role": "system"},
                    "extraArgs": {
                        # Flex: the gate scales vLLM to 0; the idle GPU node goes 10 minutes later.
                        "scale-down-unneeded-time": "10m", "scale-down-delay-after-add": "5m",
                        "expander": "least-waste", "balance-similar-node-groups": "true",
                        "skip-nodes-with-system-pods": "false",
                    },
                },
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[system, ca_role]),
        )
        chart, version, repo = LBC_CHART
        k8s.helm.v3.Release(
            f"{name}-lb-controller",
            ReleaseArgs(
                name="aws-load-balancer-controller", chart=chart, version=version, namespace="kube-system",
                repository_opts=RepositoryOptsArgs(repo=repo),
                values={
                    "clusterName": cluster_name, "region": args.region, "vpcId": args.vpc_id,
                    "serviceAccount": {"create": True, "name": "aws-load-balancer-controller"},
                    "nodeSelector": {"warmstart.dev/role": "system"},
                    "replicaCount": 2 if env == "prod" else 1,
                    # Features this endpoint does not use; off, so their permissions need not exist.
                    "enableShield": False, "enableWaf": False, "enableWafv2": False,
                },
            ),
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[system, lbc_role]),
        )

        self.cluster_name = cluster_name
        self.gpu_node_group_name = gpu.node_group_name
        self.gpu_launch_template_id = gpu_lt.id
        self.register_outputs({
            "cluster_name": self.cluster_name,
            "gpu_node_group_name": self.gpu_node_group_name,
            "gpu_asg_name": self.gpu_asg_name,
        })

    def _create_cluster(self, name: str, prefix: str, args: EksClusterArgs) -> aws.eks.Cluster:
        t = args.tags
        role = aws.iam.Role(f"{name}-cluster-role", assume_role_policy=assume_role_policy("eks.amazonaws.com"),
                            description=f"warmstart EKS control plane {prefix}", tags=t, opts=child(self))
        attach = aws.iam.RolePolicyAttachment(
            f"{name}-cluster-policy", role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy", opts=child(self))
        key = aws.kms.Key(f"{name}-secrets-key", description=f"EKS secrets envelope key {prefix}",
                          enable_key_rotation=True, deletion_window_in_days=30, tags=t, opts=child(self))
        public = bool(args.public_api_cidrs)
        cluster = aws.eks.Cluster(
            f"{name}-cluster",
            name=f"{prefix}-eks",
            role_arn=role.arn,
            version=args.kubernetes_version,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=pulumi.Output.all(args.private_subnet_ids, args.public_subnet_ids).apply(
                    lambda a: [*a[0], *a[1]]),
                endpoint_private_access=True,
                # The API is private unless the stack names who may reach it.
                endpoint_public_access=public,
                public_access_cidrs=list(args.public_api_cidrs) if public else None,
            ),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                resources=["secrets"], provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn)),
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags=named(t, f"{prefix}-eks"),
            opts=child(self, depends_on=[attach]),
        )
        addons: dict[str, str | None] = {
            # Without it NetworkPolicy objects are accepted and ignored: the gate-only rule needs it.
            "vpc-cni": json.dumps({"enableNetworkPolicy": "true"}),
            "eks-pod-identity-agent": None,
            "coredns": None,
            "kube-proxy": None,
        }
        for addon, values in addons.items():
            aws.eks.Addon(f"{name}-{addon}", cluster_name=cluster.name, addon_name=addon,
                          configuration_values=values, resolve_conflicts_on_update="OVERWRITE", tags=t,
                          opts=child(self))
        return cluster
