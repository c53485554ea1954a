"""EksDeployment: one endpoint on the EKS substrate (stack config `warmstart:substrate: eks`).

The same spec, weight cache, key table and gate as the EC2 substrate's Deployment, with the
replicas as a Kubernetes Deployment on GPU node groups instead of an ASG of instances:

    Network (or the adopted VPC) -> Keys -> WeightCache -> EksCluster -> EksWorkloads

Exports the same outputs as `components.deployment.Deployment` (endpoint_url, api_key,
dashboard_url, variant), so the stack program treats both substrates alike.

EKS-only settings come from the stack config key `warmstart:eks` (a mapping, all optional):

    clusterName        adopt this existing EKS cluster instead of creating one
    kubeconfig         with clusterName: a kubeconfig file to reach it (default: `aws eks get-token`)
    kubernetesVersion  control plane version of a created cluster (default 1.33)
    publicApiCidrs     CIDRs that may reach a created cluster's API (default: private only)
    systemInstanceType CPU node type for the gate and controllers (default m7i.large)
    storeUrl           the gate's Redis/Valkey (default: a Valkey in the endpoint's namespace)
    certificateArn     ACM certificate for HTTPS on the ALB (with the endpoint's domain)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from components.base import child, standard_tags
from components.eks_cluster import EksCluster, EksClusterArgs
from components.eks_workloads import EksWorkloads, EksWorkloadsArgs
from components.keys import Keys, KeysArgs
from components.network import Network, NetworkArgs
from components.weights import WeightCache, WeightCacheArgs
from warmstart.errors import ConfigError
from warmstart.spec import EndpointConfig, Variant

EKS_KEYS: dict[str, type] = {
    "clusterName": str, "kubeconfig": str, "kubernetesVersion": str, "publicApiCidrs": list, "systemInstanceType": str,
    "storeUrl": str, "certificateArn": str,
}


@dataclass(frozen=True)
class EksSettings:
    cluster_name: str | None = None
    kubeconfig: str | None = None  # the file's content, read when the settings are parsed
    kubernetes_version: str = "1.33"
    public_api_cidrs: tuple[str, ...] = ()
    system_instance_type: str = "m7i.large"
    store_url: str | None = None
    certificate_arn: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, source: str = "warmstart:eks") -> EksSettings:
        raw = dict(raw or {})
        for key, value in raw.items():
            want = EKS_KEYS.get(key)
            if want is None:
                raise ConfigError(f"{source}.{key} is not a known setting; use one of {', '.join(EKS_KEYS)}")
            if not isinstance(value, want):
                raise ConfigError(f"{source}.{key}={value!r} must be a {want.__name__}")
        cidrs = tuple(str(c) for c in raw.get("publicApiCidrs", ()))
        if "0.0.0.0/0" in cidrs:
            raise ConfigError(
                f"{source}.publicApiCidrs contains 0.0.0.0/0; name your office/VPN CIDRs or leave it empty "
                "(private API)"
            )
        store = raw.get("storeUrl")
        if store is not None and not str(store).startswith(("redis://", "rediss://")):
            raise ConfigError(f"{source}.storeUrl={store!r} is not a Redis URL; use redis://HOST:PORT/DB")
        kubeconfig = None
        if "kubeconfig" in raw:
            if "clusterName" not in raw:
                raise ConfigError(f"{source}.kubeconfig is for an adopted cluster; set {source}.clusterName too")
            path = Path(str(raw["kubeconfig"])).expanduser()
            try:
                kubeconfig = path.read_text()
            except OSError as e:
                raise ConfigError(f"{source}.kubeconfig={str(path)!r} cannot be read ({e.strerror}); fix the path") from None
        return cls(
            cluster_name=raw.get("clusterName"),
            kubeconfig=kubeconfig,
            kubernetes_version=str(raw.get("kubernetesVersion", "1.33")),
            public_api_cidrs=cidrs,
            system_instance_type=str(raw.get("systemInstanceType", "m7i.large")),
            store_url=store,
            certificate_arn=raw.get("certificateArn"),
        )


@dataclass
class EksDeploymentArgs:
    endpoint: EndpointConfig
    variant: Variant
    region: str
    image_uri: str
    eks: EksSettings = field(default_factory=EksSettings)


class EksDeployment(pulumi.ComponentResource):
    endpoint_url: pulumi.Output[str]
    api_key: pulumi.Output[str]
    dashboard_url: pulumi.Output[str]
    variant: str

    def __init__(self, name: str, args: EksDeploymentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("warmstart:eks:Deployment", name, None, opts)
        ep, v, s = args.endpoint, args.variant, args.eks
        env = ep.environment
        tags = standard_tags(env, ep.name, v.name)
        instance_type = ep.instance_type_for(v)
        if ep.domain and not s.certificate_arn:
            raise ConfigError(
                f"endpoint {ep.name}: domain={ep.domain!r} on EKS needs warmstart:eks.certificateArn "
                "(the ALB controller attaches an existing ACM certificate); set it or remove the domain"
            )

        network = Network(f"{name}-net", NetworkArgs(
            tags=tags, region=args.region, existing=ep.network, nat_per_az=env == "prod",
        ), opts=child(self))
        keys = Keys(f"{name}-keys", KeysArgs(environment=env, endpoint=ep.name, plan=ep.plan, tags=tags),
                    opts=child(self))
        weights = WeightCache(f"{name}-weights", WeightCacheArgs(
            variant=v, availability_zones=network.availability_zones, az_count=network.az_count,
            fast_snapshot_restore=ep.fast_snapshot_restore, tags=tags,
        ), opts=child(self))
        cluster = EksCluster(f"{name}-eks", EksClusterArgs(
            environment=env, endpoint=ep.name, region=args.region, variant=v, instance_type=instance_type,
            image_uri=args.image_uri, vpc_id=network.vpc_id, private_subnet_ids=network.private_subnet_ids,
            public_subnet_ids=network.public_subnet_ids, snapshot_id=weights.snapshot_id,
            keys_table_arn=keys.table_arn,
            min_replicas=0 if ep.stopped else ep.min_replicas,
            max_replicas=0 if ep.stopped else ep.max_replicas,
            system_instance_type=s.system_instance_type, system_nodes=ep.gate_instances,
            existing_cluster_name=s.cluster_name, kubernetes_version=s.kubernetes_version,
            kubeconfig=pulumi.Output.secret(s.kubeconfig) if s.kubeconfig else None,
            public_api_cidrs=s.public_api_cidrs, tags=tags,
        ), opts=child(self))
        workloads = EksWorkloads(f"{name}-k8s", EksWorkloadsArgs(
            endpoint=ep, variant=v, image_uri=args.image_uri, store_url=s.store_url,
            keys_table=keys.table_name, vpc_cidr=network.vpc_cidr, certificate_arn=s.certificate_arn,
            region=args.region,
        ), opts=pulumi.ResourceOptions(parent=self, provider=cluster.provider))

        scheme = "https" if s.certificate_arn else "http"
        if ep.domain:
            self.endpoint_url = pulumi.Output.from_input(f"https://{ep.domain}/v1")
        else:
            self.endpoint_url = workloads.ingress_hostname.apply(
                lambda h: f"{scheme}://{h}/v1" if h else "(the ALB's name appears once the controller created it)")
        self.api_key = keys.api_key
        self.dashboard_url = cluster.cluster_name.apply(
            lambda c: f"https://{args.region}.console.aws.amazon.com/eks/clusters/{c}?region={args.region}")
        self.variant = v.name
        self.register_outputs({
            "endpoint_url": self.endpoint_url, "api_key": self.api_key,
            "dashboard_url": self.dashboard_url, "variant": self.variant,
        })


def eks_settings_from_pulumi() -> EksSettings:
    raw = pulumi.Config("warmstart").get_object("eks")
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError("warmstart:eks must be a mapping of EKS settings")
    return EksSettings.parse(raw)
