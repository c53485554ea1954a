"""Edge: ALB (HTTPS when a domain is set), gate tier, cache reachable only from the gate, SSM config."""

from __future__ import annotations

import json

import pytest

from components.base import instance_arch
from components.edge import AL2023_AMI, TLS_POLICY, alb_idle_timeout
from components.nodegroup import GPU_AMI_PARAMETER
from runtime.gate.config import GateConfig
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
    assert tg["healthCheck"]["path"] == "/healthz" and tg["healthCheck"]["matcher"] == "200"
    assert tg["port"] == 8080


def test_idle_timeout_covers_the_longest_silent_wait() -> None:
    ep = parse_endpoint({"name": "e", "variant": "v", "allow_http": True, "request_timeout_s": 1800,
                         "hold_timeout_s": 300})
    assert alb_idle_timeout(ep) == 2130
    assert alb_idle_timeout(parse_endpoint({"name": "e", "variant": "v", "allow_http": True,
                                            "request_timeout_s": 10, "hold_timeout_s": 0})) == 300


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
    assert by_sid["OwnKeys"]["Resource"] == [table, f"{table}/index/*"]
    assert by_sid["ScaleOwnReplicas"]["Action"] == [
        "autoscaling:CreateOrUpdateTags", "autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"]
    assert by_sid["ScaleOwnReplicas"]["Resource"] == [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/ws-prod-chat-replicas"]
    replica_role = g.one("aws:iam/role:Role", "replicas-role")
    assert by_sid["PassReplicaRole"]["Resource"] == [replica_role.outputs["arn"]]
    assert by_sid["FallbackOwnTemplate"]["Condition"]["StringEquals"]["aws:ResourceTag/endpoint"] == "chat"
    lt_tags = g.one("aws:ec2/launchTemplate:LaunchTemplate", "replicas-lt").inputs["tags"]
    assert (lt_tags["endpoint"], lt_tags["environment"]) == ("chat", "prod")
    assert by_sid["PublishOwnMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Warmstart"}}
    for st in doc["Statement"]:
        if "*" in st["Resource"]:
            assert all(a.split(":")[1].startswith(("Describe", "GetAuthorizationToken", "PutMetricData"))
                       for a in st["Action"]), st


@pytest.mark.parametrize(("itype", "arch"), [("c7g.large", "arm64"), ("c7gn.xlarge", "arm64"), ("t4g.small", "arm64"),
                                             ("m7gd.large", "arm64"), ("c7i.large", "x86_64"), ("m5.large", "x86_64"),
                                             ("g5.xlarge", "x86_64"), ("c6a.large", "x86_64")])
def test_gate_ami_architecture(itype: str, arch: str) -> None:
    assert instance_arch(itype) == arch


def test_default_gate_instance_runs_the_runtime_image() -> None:
    """Gates and replicas run one runtime image, built for the replicas' x86_64 GPU AMI: an endpoint
    that leaves gate_instance_type unset must get a gate that can run it (a Graviton default could not)."""
    default = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True}).gate_instance_type
    image_arch = "x86_64" if "/x86_64/" in GPU_AMI_PARAMETER else "arm64"
    assert instance_arch(default) == image_arch == "x86_64"
