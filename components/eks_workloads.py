"""The endpoint's workloads on Kubernetes (the EKS substrate), with pulumi-kubernetes.

What runs is what the EC2 substrate runs: the vLLM container executes exactly
`runtime.image.cloudinit.engine_command(variant).argv` (the launcher's argv, weights on the
snapshot-backed disk), and the gate container runs `GATE_COMMAND` with a `GateConfig` whose pool
is kind `k8s`: the gate scales the vLLM Deployment through its scale subresource and routes to the
ready pod IPs of the vLLM Service's EndpointSlices.

Per endpoint, one namespace:

    Namespace ws-<env>-<endpoint>
    ├── ServiceAccount vllm (no API token)      ServiceAccount gate + Role/RoleBinding (scale vllm only)
    ├── Deployment vllm  (GPU nodes, replicas owned by the gate: spec.replicas is ignore_changes)
    ├── Service vllm     (headless: its EndpointSlices are the replica list)
    ├── Secret gate-config (gate.json)           Deployment gate + Service gate
    ├── PodDisruptionBudget vllm, gate
    ├── NetworkPolicy default-deny, vllm-from-gate-only, gate-from-vpc
    └── Ingress gate (AWS Load Balancer Controller → an ALB, IP targets)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pulumi_kubernetes.apps.v1 import DeploymentSpecArgs, DeploymentStrategyArgs, RollingUpdateDeploymentArgs
from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ContainerArgs,
    ContainerPortArgs,
    EmptyDirVolumeSourceArgs,
    EnvVarArgs,
    EnvVarSourceArgs,
    ExecActionArgs,
    HostPathVolumeSourceArgs,
    HTTPGetActionArgs,
    LifecycleArgs,
    LifecycleHandlerArgs,
    ObjectFieldSelectorArgs,
    PodSecurityContextArgs,
    PodSpecArgs,
    PodTemplateSpecArgs,
    ProbeArgs,
    ResourceRequirementsArgs,
    SeccompProfileArgs,
    SecretVolumeSourceArgs,
    SecurityContextArgs,
    ServicePortArgs,
    ServiceSpecArgs,
    SleepActionArgs,
    TCPSocketActionArgs,
    TolerationArgs,
    TopologySpreadConstraintArgs,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.networking.v1 import (
    HTTPIngressPathArgs,
    HTTPIngressRuleValueArgs,
    IngressBackendArgs,
    IngressRuleArgs,
    IngressServiceBackendArgs,
    IngressSpecArgs,
    IPBlockArgs,
    NetworkPolicyIngressRuleArgs,
    NetworkPolicyPeerArgs,
    NetworkPolicyPortArgs,
    NetworkPolicySpecArgs,
    ServiceBackendPortArgs,
)
from pulumi_kubernetes.policy.v1 import PodDisruptionBudgetSpecArgs
from pulumi_kubernetes.rbac.v1 import PolicyRuleArgs, RoleRefArgs, SubjectArgs

from components.timeouts import edge_timeouts
from runtime.gate.config import GateConfig, PoolConfig
from runtime.image.cloudinit import CACHE_DIR, GATE_COMMAND, GATE_CONFIG, GATE_PORT, MODEL_DIR, engine_command
from runtime.pool.k8s import STOPPED_ANNOTATION
from runtime.replica.launcher import DEFAULT_PORT
from warmstart import naming
from warmstart.spec import GPU_INSTANCES, EndpointConfig, Variant

# Node contract with components/eks_cluster.py: GPU nodes carry this label and taint, and mount
# the variant's weights volume at WEIGHTS_HOST_DIR (owned by RUN_AS_UID for the compile cache).
GPU_NODE_LABEL = "warmstart.dev/gpu"
GPU_TAINT_KEY = "nvidia.com/gpu"
VARIANT_NODE_LABEL = "warmstart.dev/variant"
RUN_AS_UID = 10001  # the runtime image's unprivileged user; the node boot script chowns the cache to it
GPU_RESOURCE = "nvidia.com/gpu"
# The gate's preStop sleep: the ALB controller deregisters the pod before gunicorn stops accepting.
GATE_PRESTOP_S = 15
POD_IP_REF = "$(POD_IP)"  # Kubernetes expands $(VAR) in command/args from the container's env

VLLM, GATE, STORE = "vllm", "gate", "store"
STORE_IMAGE = "valkey/valkey:8.1.1-alpine"
STORE_UID = RUN_AS_UID  # valkey runs as any user; a high UID never maps to a host account
STORE_AUTH_DIR = "/etc/valkey"
STORE_PORT = 6379
APP_LABEL = "app.kubernetes.io/name"
PART_OF = {"app.kubernetes.io/part-of": "warmstart"}

# The warm-up a replica must pass before it takes traffic: a one-token completion through the
# server's own API (weights loaded, CUDA graphs captured, the first kernel launches done).
WARMUP_PROBE = (
    "import json,os,sys,urllib.request as u;"
    "r=u.Request('http://'+os.environ['POD_IP']+':'+os.environ['VLLM_PORT']+'/v1/completions',"
    "data=json.dumps({'model':os.environ['SERVED_NAME'],'prompt':'Hi','max_tokens':1}).encode(),"
    "headers={'Content-Type':'application/json'});"
    "sys.exit(0 if json.load(u.urlopen(r,timeout=20))['choices'] else 1)"
)


@dataclass
class EksWorkloadsArgs:
    endpoint: EndpointConfig
    variant: Variant
    image_uri: pulumi.Input[str]
    store_url: pulumi.Input[str] | None          # the gate's admission store; None: an in-namespace Valkey
    keys_table: pulumi.Input[str]                # DynamoDB table of key hashes
    vpc_cidr: pulumi.Input[str]                  # the ALB's addresses (IP targets): the only way into the gate
    certificate_arn: pulumi.Input[str] | None = None
    region: str = "us-east-1"
    vllm_cpu: str | None = None                  # default: the replica's share of the node, see replica_resources
    vllm_memory: str | None = None
    gate_cpu: str = "1"
    gate_memory: str = "1Gi"
    extra_labels: dict[str, str] = field(default_factory=dict)


def _labels(app: str) -> dict[str, str]:
    return {APP_LABEL: app, **PART_OF}


def gate_config(args: EksWorkloadsArgs, namespace: str, store_url: str, keys_table: str) -> GateConfig:
    """The gate's configuration on Kubernetes: same GateConfig as EC2, pool kind k8s."""
    ep, v = args.endpoint, args.variant
    return GateConfig(
        endpoint=ep.name,
        plan=ep.plan,
        plan_max_concurrency=ep.plan_limits.max_concurrency if ep.plan_limits else None,
        served_name=v.served_name,
        replica_cap=ep.cap_for(v),
        store=store_url,
        keys=f"dynamodb:{keys_table}",
        pool=PoolConfig(
            kind="k8s", namespace=namespace, deployment=VLLM, service=VLLM, variant=v.name,
            min_replicas=0 if ep.stopped else ep.min_replicas, max_replicas=ep.max_replicas,
            idle_timeout_s=ep.idle_timeout_s,
        ),
        hold_timeout_s=ep.hold_timeout_s,
        request_timeout_s=ep.request_timeout_s,
        stopped=ep.stopped,
    )


def replica_resources(variant: Variant, instance_type: str) -> tuple[str, str]:
    """CPU and memory of one replica: its GPUs' share of the node, less what the node keeps for
    itself (kubelet, aws-node, the device plugin). g6.xlarge (4 vCPU, 16 GiB, 1 GPU): 3 CPUs, 11Gi."""
    info = GPU_INSTANCES[instance_type]
    share = variant.engine.tensor_parallel_size / max(info.gpu_count, 1)
    cpu = max(1, int((info.vcpus - 1) * share))
    mem = max(4, int((info.memory_gib * 0.8 - 1) * share))
    return str(cpu), f"{mem}Gi"


def _restricted(uid: int = RUN_AS_UID) -> SecurityContextArgs:
    return SecurityContextArgs(
        run_as_non_root=True, run_as_user=uid, run_as_group=uid,
        allow_privilege_escalation=False, read_only_root_filesystem=True, privileged=False,
        capabilities=CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=SeccompProfileArgs(type="RuntimeDefault"),
    )


def _pod_security(uid: int = RUN_AS_UID) -> PodSecurityContextArgs:
    return PodSecurityContextArgs(
        run_as_non_root=True, run_as_user=uid, run_as_group=uid, fs_group=uid,
        seccomp_profile=SeccompProfileArgs(type="RuntimeDefault"),
    )


def _pod_ip_env() -> EnvVarArgs:
    return EnvVarArgs(name="POD_IP", value_from=EnvVarSourceArgs(
        field_ref=ObjectFieldSelectorArgs(field_path="status.podIP", api_version="v1")))


class EksWorkloads(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    vllm_deployment: pulumi.Output[str]
    gate_service: pulumi.Output[str]
    ingress_hostname: pulumi.Output[str]

    def __init__(self, name: str, args: EksWorkloadsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("warmstart:eks:Workloads", name, None, opts)
        ep, v = args.endpoint, args.variant
        ns_name = naming.prefix(ep.environment, ep.name)
        child = pulumi.ResourceOptions(parent=self)

        ns = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata=ObjectMetaArgs(name=ns_name, labels={
                **PART_OF,
                # hostPath (the weights disk) rules out enforcing baseline/restricted; every pod
                # here meets `restricted` otherwise, and the API server reports any that does not.
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            }),
            opts=child,
        )
        ns_out = ns.metadata.apply(lambda m: str(m["name"] if isinstance(m, dict) else m.name))
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[ns])

        def meta(n: str, labels: dict[str, str] | None = None,
                 annotations: dict[str, pulumi.Input[str]] | None = None) -> ObjectMetaArgs:
            return ObjectMetaArgs(name=n, namespace=ns_name, labels={**PART_OF, **(labels or {})},
                                  annotations=annotations)

        # -- identities --------------------------------------------------------------------
        k8s.core.v1.ServiceAccount(f"{name}-vllm-sa", metadata=meta(VLLM),
                                   automount_service_account_token=False, opts=in_ns)
        gate_sa = k8s.core.v1.ServiceAccount(f"{name}-gate-sa", metadata=meta(GATE),
                                             automount_service_account_token=False, opts=in_ns)
        role = k8s.rbac.v1.Role(
            f"{name}-gate-scaler",
            metadata=meta("gate-scaler"),
            # Exactly what runtime/pool/k8s.py calls, on the vLLM Deployment only.
            rules=[
                PolicyRuleArgs(api_groups=["apps"], resources=["deployments"], resource_names=[VLLM],
                               verbs=["get"]),
                PolicyRuleArgs(api_groups=["apps"], resources=["deployments/scale"], resource_names=[VLLM],
                               verbs=["get", "patch"]),
                PolicyRuleArgs(api_groups=["discovery.k8s.io"], resources=["endpointslices"],
                               verbs=["list"]),
            ],
            opts=in_ns,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-gate-scaler",
            metadata=meta("gate-scaler"),
            role_ref=RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name="gate-scaler"),
            subjects=[SubjectArgs(kind="ServiceAccount", name=GATE, namespace=ns_name)],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role, gate_sa]),
        )

        # -- the replicas ------------------------------------------------------------------
        cmd = engine_command(v, host=POD_IP_REF)
        gpus = v.engine.tensor_parallel_size
        grace = ep.request_timeout_s + 60  # the longest non-streamed request finishes, then exit
        vllm_labels = _labels(VLLM)
        cpu, mem = replica_resources(v, ep.instance_type_for(v))
        cpu, mem = args.vllm_cpu or cpu, args.vllm_memory or mem
        env = [_pod_ip_env()] + [EnvVarArgs(name=k, value=val) for k, val in sorted(cmd.env.items())] + [
            # The image's user has no writable home under a read-only root: caches go to /tmp.
            EnvVarArgs(name="HOME", value="/tmp"),
            EnvVarArgs(name="XDG_CACHE_HOME", value="/tmp/.cache"),
            EnvVarArgs(name="SERVED_NAME", value=v.served_name),
            EnvVarArgs(name="VLLM_PORT", value=str(DEFAULT_PORT)),
        ]
        vllm = k8s.apps.v1.Deployment(
            f"{name}-vllm",
            metadata=meta(VLLM, vllm_labels, {STOPPED_ANNOTATION: "true"} if ep.stopped else None),
            spec=DeploymentSpecArgs(
                replicas=0 if ep.stopped else ep.min_replicas,
                selector=LabelSelectorArgs(match_labels={APP_LABEL: VLLM}),
                strategy=DeploymentStrategyArgs(type="RollingUpdate", rolling_update=RollingUpdateDeploymentArgs(
                    max_unavailable=0, max_surge=1)),
                revision_history_limit=5,
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels={**vllm_labels, **args.extra_labels}),
                    spec=PodSpecArgs(
                        service_account_name=VLLM,
                        automount_service_account_token=False,
                        termination_grace_period_seconds=grace,
                        security_context=_pod_security(),
                        node_selector={GPU_NODE_LABEL: "true", VARIANT_NODE_LABEL: v.name,
                                       "node.kubernetes.io/instance-type": ep.instance_type_for(v)},
                        tolerations=[TolerationArgs(key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")],
                        containers=[ContainerArgs(
                            name=VLLM,
                            image=args.image_uri,
                            image_pull_policy="Always",
                            command=list(cmd.argv),
                            env=env,
                            ports=[ContainerPortArgs(name="http", container_port=DEFAULT_PORT, protocol="TCP")],
                            resources=ResourceRequirementsArgs(
                                requests={GPU_RESOURCE: str(gpus), "cpu": cpu, "memory": mem},
                                limits={GPU_RESOURCE: str(gpus), "cpu": cpu, "memory": mem},
                            ),
                            # Loading and compiling takes minutes: the startup probe allows 30 of them,
                            # and it is the one-token warm-up, so Ready means "answered a completion".
                            startup_probe=ProbeArgs(
                                exec_=ExecActionArgs(command=["python3", "-c", WARMUP_PROBE]),
                                period_seconds=5, timeout_seconds=25, failure_threshold=360,
                            ),
                            readiness_probe=ProbeArgs(
                                http_get=HTTPGetActionArgs(path="/health", port="http"),
                                period_seconds=5, timeout_seconds=3, failure_threshold=2,
                            ),
                            liveness_probe=ProbeArgs(
                                http_get=HTTPGetActionArgs(path="/health", port="http"),
                                period_seconds=15, timeout_seconds=5, failure_threshold=4,
                            ),
                            # Leave the EndpointSlice (the gate stops routing here) before SIGTERM.
                            lifecycle=LifecycleArgs(pre_stop=LifecycleHandlerArgs(
                                sleep=SleepActionArgs(seconds=GATE_PRESTOP_S))),
                            security_context=_restricted(),
                            volume_mounts=[
                                VolumeMountArgs(name="model", mount_path=MODEL_DIR, read_only=True),
                                VolumeMountArgs(name="compile-cache", mount_path=CACHE_DIR),
                                VolumeMountArgs(name="tmp", mount_path="/tmp"),
                                VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
                            ],
                        )],
                        volumes=[
                            VolumeArgs(name="model", host_path=HostPathVolumeSourceArgs(
                                path=MODEL_DIR, type="Directory")),
                            VolumeArgs(name="compile-cache", host_path=HostPathVolumeSourceArgs(
                                path=CACHE_DIR, type="DirectoryOrCreate")),
                            VolumeArgs(name="tmp", empty_dir=EmptyDirVolumeSourceArgs(size_limit="8Gi")),
                            # NCCL / tensor parallel workers share memory through /dev/shm.
                            VolumeArgs(name="dshm", empty_dir=EmptyDirVolumeSourceArgs(
                                medium="Memory", size_limit="4Gi")),
                        ],
                    ),
                ),
            ),
            # The gate owns the replica count (scale subresource); a `pulumi up` must not undo it.
            # Stopped is the exception: the deploy itself takes the replicas to zero (and the
            # annotation tells the gate's pool never to wake them), like the EC2 group's max 0.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ns],
                                        ignore_changes=[] if ep.stopped else ["spec.replicas"]),
        )
        k8s.core.v1.Service(
            f"{name}-vllm-svc",
            metadata=meta(VLLM, vllm_labels),
            spec=ServiceSpecArgs(
                cluster_ip="None",  # headless: the gate routes to pod IPs, never through kube-proxy
                selector={APP_LABEL: VLLM},
                ports=[ServicePortArgs(name="http", port=DEFAULT_PORT, target_port="http", protocol="TCP")],
                publish_not_ready_addresses=False,
            ),
            opts=in_ns,
        )

        # -- the admission store (leases, rate, caps) ---------------------------------------
        store_url: pulumi.Input[str]
        if args.store_url is not None:
            store_url = args.store_url
        else:
            store_url = self._store(name, ns_name, meta, in_ns)

        # -- the gate ----------------------------------------------------------------------
        def render(values: list[str]) -> str:
            cfg = gate_config(args, ns_name, values[0], values[1])
            return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, indent=2)

        config_json = pulumi.Output.all(store_url, args.keys_table).apply(render)
        secret = k8s.core.v1.Secret(
            f"{name}-gate-config",
            metadata=meta("gate-config"),
            type="Opaque",
            # The store URL may carry a Redis AUTH token: a Secret, mounted as a file.
            string_data={"gate.json": _secret(config_json)},
            opts=in_ns,
        )
        gate_labels = _labels(GATE)
        # One rule with the EC2 edge (components/timeouts.py): ALB idle < gate keep-alive,
        # deregistration delay = graceful timeout = request + hold; the pod's grace covers the
        # preStop sleep plus gunicorn's graceful stop.
        gate_times = edge_timeouts(request_timeout_s=ep.request_timeout_s, hold_timeout_s=ep.hold_timeout_s)
        gate_grace = GATE_PRESTOP_S + gate_times.stop_timeout_s
        gate_dep = k8s.apps.v1.Deployment(
            f"{name}-gate",
            metadata=meta(GATE, gate_labels),
            spec=DeploymentSpecArgs(
                replicas=ep.gate_instances,
                selector=LabelSelectorArgs(match_labels={APP_LABEL: GATE}),
                strategy=DeploymentStrategyArgs(type="RollingUpdate", rolling_update=RollingUpdateDeploymentArgs(
                    max_unavailable=0, max_surge=1)),
                revision_history_limit=5,
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(
                        labels={**gate_labels, **args.extra_labels},
                        # A new gate config rolls the gates (the file is read at start).
                        annotations={"warmstart.dev/config-sha256": config_json.apply(_sha256)},
                    ),
                    spec=PodSpecArgs(
                        service_account_name=GATE,
                        # The gate's pool needs the API; the token is projected, short-lived.
                        automount_service_account_token=True,
                        termination_grace_period_seconds=gate_grace,
                        security_context=_pod_security(),
                        topology_spread_constraints=[TopologySpreadConstraintArgs(
                            max_skew=1, topology_key="topology.kubernetes.io/zone",
                            when_unsatisfiable="ScheduleAnyway",
                            label_selector=LabelSelectorArgs(match_labels={APP_LABEL: GATE}),
                        )],
                        containers=[ContainerArgs(
                            name=GATE,
                            image=args.image_uri,
                            image_pull_policy="Always",
                            command=list(GATE_COMMAND),
                            env=[
                                EnvVarArgs(name="AWS_REGION", value=args.region),
                                EnvVarArgs(name="HOME", value="/tmp"),
                                EnvVarArgs(name="PROMETHEUS_MULTIPROC_DIR", value="/tmp/metrics"),
                                *[EnvVarArgs(name=k, value=val) for k, val in sorted(gate_times.gate_env().items())],
                            ],
                            ports=[ContainerPortArgs(name="http", container_port=GATE_PORT, protocol="TCP")],
                            resources=ResourceRequirementsArgs(
                                requests={"cpu": args.gate_cpu, "memory": args.gate_memory},
                                limits={"cpu": args.gate_cpu, "memory": args.gate_memory},
                            ),
                            readiness_probe=ProbeArgs(
                                http_get=HTTPGetActionArgs(path="/healthz", port="http"),
                                period_seconds=5, timeout_seconds=2, failure_threshold=2,
                            ),
                            liveness_probe=ProbeArgs(
                                http_get=HTTPGetActionArgs(path="/healthz", port="http"),
                                period_seconds=10, timeout_seconds=3, failure_threshold=6,
                            ),
                            lifecycle=LifecycleArgs(pre_stop=LifecycleHandlerArgs(
                                sleep=SleepActionArgs(seconds=GATE_PRESTOP_S))),
                            security_context=_restricted(),
                            volume_mounts=[
                                VolumeMountArgs(name="config", mount_path=GATE_CONFIG, sub_path="gate.json",
                                                read_only=True),
                                VolumeMountArgs(name="tmp", mount_path="/tmp"),
                            ],
                        )],
                        volumes=[
                            VolumeArgs(name="config", secret=SecretVolumeSourceArgs(
                                secret_name="gate-config", default_mode=0o440)),
                            VolumeArgs(name="tmp", empty_dir=EmptyDirVolumeSourceArgs(size_limit="1Gi")),
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ns, secret, gate_sa]),
        )
        gate_svc = k8s.core.v1.Service(
            f"{name}-gate-svc",
            metadata=meta(GATE, gate_labels),
            spec=ServiceSpecArgs(
                type="ClusterIP",
                selector={APP_LABEL: GATE},
                ports=[ServicePortArgs(name="http", port=80, target_port="http", protocol="TCP")],
            ),
            opts=in_ns,
        )

        # -- availability ------------------------------------------------------------------
        for app in (VLLM, GATE):
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{app}-pdb",
                metadata=meta(app, _labels(app)),
                # One at a time: a drain never takes the whole tier, and a single replica is not
                # pinned forever (minAvailable would block node upgrades when Flex runs one).
                spec=PodDisruptionBudgetSpecArgs(
                    max_unavailable=1, selector=LabelSelectorArgs(match_labels={APP_LABEL: app})),
                opts=in_ns,
            )

        # -- network -----------------------------------------------------------------------
        k8s.networking.v1.NetworkPolicy(
            f"{name}-default-deny",
            metadata=meta("default-deny"),
            spec=NetworkPolicySpecArgs(pod_selector=LabelSelectorArgs(), policy_types=["Ingress"]),
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-vllm-from-gate",
            metadata=meta("vllm-from-gate-only"),
            # Egress denied too: a replica serves from its disk and never reaches a model hub.
            spec=_from_gate_only(VLLM, DEFAULT_PORT),
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-gate-from-vpc",
            metadata=meta("gate-from-alb"),
            spec=NetworkPolicySpecArgs(
                pod_selector=LabelSelectorArgs(match_labels={APP_LABEL: GATE}),
                policy_types=["Ingress"],
                # The ALB reaches IP targets from its ENIs inside the VPC.
                ingress=[NetworkPolicyIngressRuleArgs(
                    from_=[NetworkPolicyPeerArgs(ip_block=IPBlockArgs(cidr=args.vpc_cidr))],
                    ports=[NetworkPolicyPortArgs(port=GATE_PORT, protocol="TCP")],
                )],
            ),
            opts=in_ns,
        )

        # -- the edge ----------------------------------------------------------------------
        https = args.certificate_arn is not None
        idle = gate_times.alb_idle_s
        annotations: dict[str, pulumi.Input[str]] = {
            "alb.ingress.kubernetes.io/scheme": "internet-facing",
            "alb.ingress.kubernetes.io/target-type": "ip",
            "alb.ingress.kubernetes.io/healthcheck-path": "/livez",  # liveness: never Redis (docs/operations.md)
            "alb.ingress.kubernetes.io/load-balancer-attributes":
                f"idle_timeout.timeout_seconds={idle},routing.http.drop_invalid_header_fields.enabled=true",
            "alb.ingress.kubernetes.io/target-group-attributes":
                ("load_balancing.algorithm.type=least_outstanding_requests,"
                 f"deregistration_delay.timeout_seconds={gate_times.deregistration_delay_s}"),
            "alb.ingress.kubernetes.io/tags": f"warmstart:endpoint={ep.name},warmstart:environment={ep.environment}",
        }
        if https:
            assert args.certificate_arn is not None
            annotations.update({
                "alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}, {"HTTPS": 443}]',
                "alb.ingress.kubernetes.io/ssl-redirect": "443",
                "alb.ingress.kubernetes.io/certificate-arn": args.certificate_arn,
                "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            })
        else:
            annotations["alb.ingress.kubernetes.io/listen-ports"] = '[{"HTTP": 80}]'
        ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata=meta(GATE, gate_labels, annotations),
            spec=IngressSpecArgs(
                ingress_class_name="alb",
                rules=[IngressRuleArgs(http=HTTPIngressRuleValueArgs(paths=[HTTPIngressPathArgs(
                    path="/", path_type="Prefix",
                    backend=IngressBackendArgs(service=IngressServiceBackendArgs(
                        name=GATE, port=ServiceBackendPortArgs(name="http"))),
                )]))],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[gate_svc, gate_dep]),
        )

        self.namespace = ns_out
        self.vllm_deployment = vllm.metadata.apply(lambda m: str(m["name"] if isinstance(m, dict) else m.name))
        self.gate_service = gate_svc.metadata.apply(lambda m: str(m["name"] if isinstance(m, dict) else m.name))
        self.ingress_hostname = ingress.status.apply(_hostname)
        self.register_outputs({
            "namespace": self.namespace,
            "vllm_deployment": self.vllm_deployment,
            "gate_service": self.gate_service,
            "ingress_hostname": self.ingress_hostname,
        })


    def _store(self, name: str, ns_name: str, meta: Any, in_ns: pulumi.ResourceOptions) -> pulumi.Output[str]:
        """Valkey in the namespace: leases and counters are short-lived, a restart only resets them
        (the gate's admission tolerates that); AUTH with a generated password, gate-only network."""
        password = random.RandomPassword(f"{name}-store-password", length=40, special=False, opts=in_ns)
        k8s.core.v1.Secret(
            f"{name}-store-auth", metadata=meta("store-auth"), type="Opaque",
            # A config file, not an environment variable: env leaks into crash dumps and `ps e`.
            string_data={"auth.conf": pulumi.Output.concat("requirepass ", password.result, "\n")}, opts=in_ns,
        )
        labels = _labels(STORE)
        k8s.apps.v1.Deployment(
            f"{name}-store",
            metadata=meta(STORE, labels),
            spec=DeploymentSpecArgs(
                replicas=1,
                selector=LabelSelectorArgs(match_labels={APP_LABEL: STORE}),
                strategy=DeploymentStrategyArgs(type="Recreate"),
                revision_history_limit=3,
                template=PodTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=labels),
                    spec=PodSpecArgs(
                        automount_service_account_token=False,
                        security_context=_pod_security(STORE_UID),
                        node_selector={"warmstart.dev/role": "system"},
                        containers=[ContainerArgs(
                            name=STORE,
                            image=STORE_IMAGE,
                            image_pull_policy="Always",
                            command=["valkey-server", f"{STORE_AUTH_DIR}/auth.conf", "--port", str(STORE_PORT),
                                     "--save", "", "--appendonly", "no", "--maxmemory", "200mb",
                                     "--maxmemory-policy", "noeviction"],
                            ports=[ContainerPortArgs(name="redis", container_port=STORE_PORT, protocol="TCP")],
                            resources=ResourceRequirementsArgs(
                                requests={"cpu": "250m", "memory": "256Mi"},
                                limits={"cpu": "250m", "memory": "256Mi"},
                            ),
                            readiness_probe=ProbeArgs(
                                tcp_socket=TCPSocketActionArgs(port="redis"), period_seconds=5),
                            liveness_probe=ProbeArgs(
                                tcp_socket=TCPSocketActionArgs(port="redis"), period_seconds=10,
                                failure_threshold=6),
                            security_context=_restricted(STORE_UID),
                            volume_mounts=[VolumeMountArgs(name="data", mount_path="/data"),
                                           VolumeMountArgs(name="auth", mount_path=STORE_AUTH_DIR, read_only=True)],
                        )],
                        volumes=[VolumeArgs(name="data", empty_dir=EmptyDirVolumeSourceArgs(size_limit="256Mi")),
                                 VolumeArgs(name="auth", secret=SecretVolumeSourceArgs(
                                     secret_name="store-auth", default_mode=0o440))],
                    ),
                ),
            ),
            opts=in_ns,
        )
        k8s.core.v1.Service(
            f"{name}-store-svc",
            metadata=meta(STORE, labels),
            spec=ServiceSpecArgs(
                type="ClusterIP", selector={APP_LABEL: STORE},
                ports=[ServicePortArgs(name="redis", port=STORE_PORT, target_port="redis", protocol="TCP")],
            ),
            opts=in_ns,
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-store-from-gate",
            metadata=meta("store-from-gate-only"),
            spec=_from_gate_only(STORE, STORE_PORT),
            opts=in_ns,
        )
        url: pulumi.Output[str] = pulumi.Output.concat(
            "redis://:", password.result, f"@{STORE}.{ns_name}.svc.cluster.local:{STORE_PORT}/0")
        return url


def _from_gate_only(app: str, port: int) -> NetworkPolicySpecArgs:
    """Pods of `app` accept TCP `port` from the gate's pods only, and open no connection of their own."""
    return NetworkPolicySpecArgs(
        pod_selector=LabelSelectorArgs(match_labels={APP_LABEL: app}),
        policy_types=["Ingress", "Egress"],
        ingress=[NetworkPolicyIngressRuleArgs(
            from_=[NetworkPolicyPeerArgs(pod_selector=LabelSelectorArgs(match_labels={APP_LABEL: GATE}))],
            ports=[NetworkPolicyPortArgs(port=port, protocol="TCP")],
        )],
        egress=[],
    )


def _secret(value: pulumi.Output[str]) -> pulumi.Output[str]:
    out: pulumi.Output[str] = pulumi.Output.secret(value)
    return out


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _hostname(status: object) -> str:
    try:
        lb = status["load_balancer"] if isinstance(status, dict) else status.load_balancer  # type: ignore[attr-defined]
        ing = lb["ingress"] if isinstance(lb, dict) else lb.ingress
        first = ing[0]
        return str(first["hostname"] if isinstance(first, dict) else first.hostname)
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
