"""Edge: ALB (HTTPS when a domain is set), gate tier, cache reachable only from the gate, SSM config."""

from __future__ import annotations

import json
import shlex

import pytest

from components.base import instance_arch
from components.edge import (
    AL2023_AMI,
    GATE_BOOT_S,
    LIVENESS_PATH,
    TLS_POLICY,
    alb_idle_timeout,
    gate_tier_size,
    timeouts_for,
    vcpus,
)
from components.nodegroup import GPU_AMI_PARAMETER
from runtime.gate.config import GateConfig
from runtime.image import cloudinit
from stacks.preview import Graph, _h
from tests.support.pulumi_harness import stack_graph
from warmstart import naming
from warmstart.spec import parse_endpoint

SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LISTENER = "aws:lb/listener:Listener"


def _ingress_of(g: Graph, sg_suffix: str) -> list[dict]:
    sg = g.one(SG, sg_suffix)
    return [r.inputs for r in g.of_type(INGRESS) if r.inputs["securityGroupId"] == sg.id]


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_alb(env: str) -> None:
    g = stack_graph(env)
    alb = g.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert alb["loadBalancerType"] == "application" and alb["internal"] is False
    assert alb["idleTimeout"] >= 300
    assert alb["dropInvalidHeaderFields"] is True
    tg = g.one("aws:lb/targetGroup:TargetGroup").inputs
    assert tg["loadBalancingAlgorithmType"] == "least_outstanding_requests"
    assert tg["healthCheck"]["matcher"] == "200"
    assert tg["port"] == 8080


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_alb_health_check_is_liveness_not_redis(env: str) -> None:
    """A Redis failover makes the gate's readiness (/healthz) 503 on every gate at once; with
    health_check_type ELB ("Amazon EC2 Auto Scaling replaces the instance if the load balancer
    reports it as unhealthy") that would replace the whole tier. The ALB checks /livez: the worker
    serves HTTP, independent of Redis and the key store."""
    g = stack_graph(env)
    tg = g.one("aws:lb/targetGroup:TargetGroup").inputs
    assert tg["healthCheck"]["path"] == LIVENESS_PATH == "/livez"
    assert g.one("aws:autoscaling/group:Group", "gate-asg").inputs["healthCheckType"] == "ELB"


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_edge_timeouts_follow_one_rule(env: str) -> None:
    """ALB attribute idle_timeout.timeout_seconds covers request + hold; the gate's keep-alive is
    above it (AWS: configure "the idle timeout of your application to be larger than the idle
    timeout configured for the load balancer"); deregistration_delay.timeout_seconds = request +
    hold; docker stop's bound is above gunicorn's graceful timeout."""
    g = stack_graph(env)
    ep = parse_endpoint(dict(stack_graph_endpoint(env)))
    times = timeouts_for(ep)
    alb = g.one("aws:lb/loadBalancer:LoadBalancer").inputs
    tg = g.one("aws:lb/targetGroup:TargetGroup").inputs
    assert alb["idleTimeout"] == times.alb_idle_s >= ep.request_timeout_s + ep.hold_timeout_s
    assert tg["deregistrationDelay"] == times.deregistration_delay_s == ep.request_timeout_s + ep.hold_timeout_s
    ud = cloudinit.decode(g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs["userData"])
    unit = cloudinit.written_file(ud, "/etc/systemd/system/warmstart-gate.service")
    argv = shlex.split(next(ln for ln in unit.splitlines() if ln.startswith("ExecStart=")).removeprefix("ExecStart="))
    env_flags = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-e")
    assert int(env_flags["WS_GATE_KEEPALIVE"]) > alb["idleTimeout"]
    assert int(env_flags["WS_GATE_GRACEFUL_TIMEOUT"]) >= tg["deregistrationDelay"]
    stop = next(ln for ln in unit.splitlines() if ln.startswith("ExecStop="))
    assert int(shlex.split(stop)[shlex.split(stop).index("--time") + 1]) > int(env_flags["WS_GATE_GRACEFUL_TIMEOUT"])


def stack_graph_endpoint(env: str) -> dict:
    from tests.support.pulumi_harness import stack_values

    return stack_values(env)["warmstart:endpoints"][0]


def test_idle_timeout_covers_the_longest_silent_wait() -> None:
    ep = parse_endpoint({"name": "e", "variant": "v", "allow_http": True, "request_timeout_s": 1800,
                         "hold_timeout_s": 300})
    assert alb_idle_timeout(ep) == 2130
    assert alb_idle_timeout(parse_endpoint({"name": "e", "variant": "v", "allow_http": True,
                                            "request_timeout_s": 10, "hold_timeout_s": 0})) == 60


def test_https_with_a_domain() -> None:
    g = stack_graph("prod")
    listeners = {r.inputs["port"]: r.inputs for r in g.of_type(LISTENER)}
    assert set(listeners) == {443, 80}
    https = listeners[443]
    assert https["protocol"] == "HTTPS" and https["sslPolicy"] == TLS_POLICY
    validation = g.one("aws:acm/certificateValidation:CertificateValidation")
    assert https["certificateArn"] == validation.outputs["certificateArn"]
    assert https["defaultActions"][0]["type"] == "forward"
    redirect = listeners[80]["defaultActions"][0]
    assert redirect["type"] == "redirect" and redirect["redirect"]["protocol"] == "HTTPS"
    assert g.one("aws:acm/certificate:Certificate").inputs["domainName"] == "api.example.com"
    alias = [r for r in g.of_type("aws:route53/record:Record") if r.inputs["type"] == "A"]
    assert alias[0].inputs["name"] == "api.example.com"
    assert g.outputs["endpoint_url"]["value"] == "https://api.example.com/v1"
    ports = {(i["fromPort"], "cidrIpv4" in i) for i in _ingress_of(g, "alb-sg")}
    assert ports == {(443, True), (443, False), (80, True), (80, False)}


def test_plain_http_only_where_allowed() -> None:
    g = stack_graph("dev")
    (listener,) = g.of_type(LISTENER)
    assert listener.inputs["port"] == 80 and listener.inputs["protocol"] == "HTTP"
    assert listener.inputs["defaultActions"][0]["type"] == "forward"
    assert g.of_type("aws:acm/certificate:Certificate") == []
    assert {i["fromPort"] for i in _ingress_of(g, "alb-sg")} == {80}
    assert g.outputs["endpoint_url"]["value"].startswith("http://")


@pytest.mark.parametrize(("env", "gates"), [("dev", 1), ("staging", 2), ("prod", 2)])
def test_gate_tier(env: str, gates: int) -> None:
    g = stack_graph(env)
    asg = g.one("aws:autoscaling/group:Group", "gate-asg")
    assert asg.inputs["name"] == naming.gate_asg_name(env, "chat")
    assert asg.inputs["minSize"] == gates and asg.inputs["maxSize"] >= gates
    refresh = asg.inputs["instanceRefresh"]["preferences"]
    assert refresh["maxHealthyPercentage"] - refresh["minHealthyPercentage"] <= 100
    assert asg.inputs["targetGroupArns"] == [g.one("aws:lb/targetGroup:TargetGroup").outputs["arn"]]
    assert asg.inputs["healthCheckType"] == "ELB"
    assert asg.options["ignore_changes"] == ["desiredCapacity"]
    gate_in = _ingress_of(g, "gate-sg")
    assert [(i["fromPort"], i["referencedSecurityGroupId"]) for i in gate_in] == [
        (8080, g.one(SG, "alb-sg").id)]
    lt = g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs
    assert lt["instanceType"] == "c7i.large"
    assert lt["imageId"] == "ami-0" + _h(AL2023_AMI.format(arch="x86_64"), 16)  # AMI matches the CPU
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_cache_only_from_the_gate(env: str) -> None:
    g = stack_graph(env)
    rg = g.one("aws:elasticache/replicationGroup:ReplicationGroup").inputs
    assert rg["engine"] == "valkey"
    assert rg["transitEncryptionEnabled"] is True and rg["atRestEncryptionEnabled"] is True
    assert rg["authToken"]
    assert rg["securityGroupIds"] == [g.one(SG, "cache-sg").id]
    assert [(i["fromPort"], i["referencedSecurityGroupId"]) for i in _ingress_of(g, "cache-sg")] == [
        (6379, g.one(SG, "gate-sg").id)]
    assert rg["multiAzEnabled"] is (env == "prod")


def test_gate_config_in_ssm_is_a_valid_gate_config() -> None:
    g = stack_graph("prod")
    p = g.one("aws:ssm/parameter:Parameter")
    assert p.inputs["name"] == naming.gate_config_parameter("prod", "chat")
    assert p.inputs["type"] == "SecureString"
    assert "value" in p.secret_inputs
    cfg = GateConfig.parse(json.loads(p.inputs["value"]))
    assert cfg.endpoint == "chat" and cfg.plan == "team" and cfg.served_name == "llama-3.1-8b-instruct"
    assert cfg.pool.kind == "aws" and cfg.pool.asg_name == naming.replica_asg_name("prod", "chat")
    assert (cfg.pool.min_replicas, cfg.pool.max_replicas) == (1, 8)
    assert cfg.keys == f"dynamodb:{naming.keys_table_name('prod', 'chat')}"
    cache = g.one("aws:elasticache/replicationGroup:ReplicationGroup")
    assert cfg.store.startswith("rediss://:") and cache.outputs["primaryEndpointAddress"] in cfg.store
    assert cfg.stopped is False and cfg.replica_cap == 30


def test_gate_role_is_least_privilege() -> None:
    g = stack_graph("prod")
    doc = json.loads(g.one("aws:iam/rolePolicy:RolePolicy", "gate-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["OwnConfig"]["Resource"] == [g.one("aws:ssm/parameter:Parameter").outputs["arn"]]
    table = g.one("aws:dynamodb/table:Table").outputs["arn"]
    # the gate only looks keys up (GetItem); `warmstart keys` writes them with the operator's credentials
    assert by_sid["ReadOwnKeys"]["Action"] == ["dynamodb:GetItem"]
    assert by_sid["ReadOwnKeys"]["Resource"] == [table]
    assert by_sid["ScaleOwnReplicas"]["Action"] == [
        "autoscaling:CreateOrUpdateTags", "autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"]
    assert by_sid["ScaleOwnReplicas"]["Resource"] == [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/ws-prod-chat-replicas"]
    assert "autoscaling:DescribeWarmPool" not in by_sid["DiscoverReplicas"]["Action"]  # never called
    assert by_sid["EcrPull"]["Action"] == ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]  # what a pull calls
    assert by_sid["EcrPull"]["Resource"] == ["arn:aws:ecr:us-east-1:123456789012:repository/warmstart-gate"]
    assert by_sid["PublishOwnMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Warmstart"}}
    for st in doc["Statement"]:
        if "*" in st["Resource"]:
            assert all(a.split(":")[1].startswith(("Describe", "GetAuthorizationToken", "PutMetricData"))
                       for a in st["Action"]), st


def test_capacity_fallback_may_launch_from_the_replica_template_only() -> None:
    """UpdateAutoScalingGroup with a launch template: "An IAM user or role that creates or updates
    an Auto Scaling group using a launch template must have permission to use the ec2:RunInstances
    action. Users without this permission receive an error that they are not authorized to use the
    launch template." Granted on the gate's role, for the replica template's ARN only (condition
    key ec2:LaunchTemplate), with ec2:CreateTags only as part of a launch (ec2:CreateAction =
    RunInstances) and iam:PassRole only for the replica role."""
    g = stack_graph("prod")
    fallback = g.one("aws:iam/rolePolicy:RolePolicy", "gate-fallback")
    assert fallback.inputs["role"] == g.one("aws:iam/role:Role", "gate-role").outputs["name"]
    by_sid = {s["Sid"]: s for s in json.loads(fallback.inputs["policy"])["Statement"]}
    template = g.one("aws:ec2/launchTemplate:LaunchTemplate", "replicas-lt").outputs["arn"]
    gate_template = g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").outputs["arn"]
    assert by_sid["FallbackOwnTemplate"] == {"Sid": "FallbackOwnTemplate", "Effect": "Allow", "Resource": [template],
                                             "Action": ["ec2:CreateLaunchTemplateVersion"]}
    assert gate_template not in json.dumps(by_sid)  # the gate may not rewrite its own template
    run = by_sid["LaunchFromOwnTemplateOnly"]
    assert run["Action"] == ["ec2:RunInstances"] and run["Condition"] == {"ArnEquals": {"ec2:LaunchTemplate": template}}
    assert "*" not in run["Resource"] and template in run["Resource"]
    tags = by_sid["TagAtLaunchOnly"]
    assert tags["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    assert all(r.split(":")[5].split("/")[0] in ("instance", "volume") for r in tags["Resource"])
    replica_role = g.one("aws:iam/role:Role", "replicas-role")
    assert by_sid["PassReplicaRole"]["Resource"] == [replica_role.outputs["arn"]]
    assert by_sid["PassReplicaRole"]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


@pytest.mark.parametrize(("itype", "arch"), [("c7g.large", "arm64"), ("c7gn.xlarge", "arm64"), ("t4g.small", "arm64"),
                                             ("m7gd.large", "arm64"), ("c7i.large", "x86_64"), ("m5.large", "x86_64"),
                                             ("g5.xlarge", "x86_64"), ("c6a.large", "x86_64")])
def test_gate_ami_architecture(itype: str, arch: str) -> None:
    assert instance_arch(itype) == arch


def test_default_gate_instance_runs_the_runtime_image() -> None:
    """The gate image is built for x86_64, like the runtime image for the replicas' GPU AMI: an
    endpoint that leaves gate_instance_type unset must get a gate that can run it (a Graviton
    default could not)."""
    default = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True}).gate_instance_type
    image_arch = "x86_64" if "/x86_64/" in GPU_AMI_PARAMETER else "arm64"
    assert instance_arch(default) == image_arch == "x86_64"


@pytest.mark.parametrize(("env", "floor", "ceiling"), [("dev", 1, 2), ("staging", 2, 2), ("prod", 2, 8)])
def test_gate_tier_tracks_cpu_between_a_floor_across_azs_and_the_plan(env: str, floor: int, ceiling: int) -> None:
    """Target tracking, predefined metric ASGAverageCPUUtilization ("Average CPU utilization of the
    Auto Scaling group"), on the gate group: its floor spans the AZs in prod, its ceiling carries the
    plan's concurrent streams (pro 240, team 960) at the benchmark's relay rate."""
    g = stack_graph(env)
    asg = g.one("aws:autoscaling/group:Group", "gate-asg")
    assert (asg.inputs["minSize"], asg.inputs["maxSize"]) == (floor, ceiling)
    if env == "prod":
        assert floor >= len(g.of_type("aws:ec2/subnet:Subnet")) // 2  # one per AZ at least
    (policy,) = [p for p in g.of_type("aws:autoscaling/policy:Policy")
                 if p.inputs["autoscalingGroupName"] == asg.outputs["name"]]
    tt = policy.inputs["targetTrackingConfiguration"]
    assert policy.inputs["policyType"] == "TargetTrackingScaling"
    assert tt["predefinedMetricSpecification"] == {"predefinedMetricType": "ASGAverageCPUUtilization"}
    assert 0 < tt["targetValue"] <= 70


def test_gate_tier_size_per_plan() -> None:
    """~5,000 SSE events per vCPU-second (docs/benchmarks.md), 40 events/s per stream, CPU held at 50%:
    pro's 240 streams need 2 c7i.large, team's 960 need 8; a bigger type needs fewer."""
    assert vcpus("c7i.large") == 2 and vcpus("c7i.xlarge") == 4 and vcpus("m7i.4xlarge") == 16
    assert gate_tier_size(plan_concurrency=240, instance_type="c7i.large", floor=1) == (1, 2)
    assert gate_tier_size(plan_concurrency=960, instance_type="c7i.large", floor=2) == (2, 8)
    assert gate_tier_size(plan_concurrency=960, instance_type="c7i.2xlarge", floor=2) == (2, 2)
    assert gate_tier_size(plan_concurrency=7680, instance_type="c7i.large", floor=2) == (2, 20)
    with pytest.raises(ValueError, match="gate_instance_type='c7i.metal-48xl'"):
        vcpus("c7i.metal-48xl")


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_gate_boots_the_slim_gate_image_within_its_grace(env: str) -> None:
    """health_check_grace_period (HealthCheckGracePeriod: "the amount of time ... before checking the
    health status of an EC2 instance that has come into service") covers the gate's boot with room
    to spare, and the root volume holds the AMI's snapshot plus the slim image twice."""
    g = stack_graph(env)
    asg = g.one("aws:autoscaling/group:Group", "gate-asg").inputs
    assert asg["healthCheckGracePeriod"] == 2 * GATE_BOOT_S and asg["defaultInstanceWarmup"] == 2 * GATE_BOOT_S
    lt = g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs
    assert 8 + 2 <= lt["blockDeviceMappings"][0]["ebs"]["volumeSize"] <= 30
    env_file = cloudinit.written_file(cloudinit.decode(lt["userData"]), cloudinit.BOOT_ENV)
    assert "IMAGE_URI=123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-gate:0.1.0" in env_file.splitlines()
