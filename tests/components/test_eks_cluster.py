"""The EKS substrate's AWS side under Pulumi mocks: the foundation's policies hold on its graph,
GPU nodes scale from zero and mount the weight cache, an existing cluster is adopted, the stack
config selects the substrate, and `warmstart preview --stack eks-dev` renders it all."""

from __future__ import annotations

import base64
import email
import json
import subprocess
import sys
from typing import Any

import parliament
import pytest
from pulumi.runtime import mocks as pmocks

from components.eks_cluster import (
    CA_TEMPLATE,
    autoscaler_node_template_tags,
    cluster_autoscaler_policy,
    gpu_nodes_needed,
    load_balancer_controller_policy,
)
from components.eks_deployment import EksDeployment, EksDeploymentArgs, EksSettings
from runtime.image.cloudinit import WEIGHTS_DEVICE, WEIGHTS_LABEL, WEIGHTS_MOUNT
from stacks import policy
from stacks.config import load_stack, parse_stack_config, read_stack_file
from stacks.preview import AwsMocks, Graph
from tests.support.pulumi_harness import Recorder, stack_graph
from warmstart.errors import ConfigError
from warmstart.spec import load_variant, parse_endpoint

STACK = "eks-dev"
NODEGROUP = "aws:eks/nodeGroup:NodeGroup"
LT = "aws:ec2/launchTemplate:LaunchTemplate"


@pytest.fixture(scope="module")
def graph() -> Graph:
    return stack_graph(STACK)


def test_the_foundation_policies_hold_on_the_eks_graph(graph: Graph) -> None:
    assert policy.check(graph) == []


def test_the_policies_see_the_eks_resources(graph: Graph) -> None:
    """Guard against a vacuous pass: the rules do look at what the EKS components declare."""
    assert len(graph.of_type(LT)) == 2
    assert any(r.type == "aws:iam/rolePolicy:RolePolicy" and "-eks-" in r.name for r in graph)
    assert not any(r.type == "aws:autoscaling/group:Group" for r in graph)  # the EC2 replica ASG is not built


def test_eks_iam_policies_pass_parliament(graph: Graph) -> None:
    for r, field, doc in policy.policy_documents(graph):
        if "-eks-" not in r.name or field == "assumeRolePolicy":  # trust policies name no Resource
            continue
        findings = parliament.analyze_policy_string(json.dumps(doc)).findings
        # parliament's action table lists only the `net` (NLB) form of listener ARNs; ours are ALB's.
        real = [f for f in findings if not (
            f.issue == "RESOURCE_MISMATCH"
            and all("elasticloadbalancing:*:*:listener" in d["required_format"] for d in f.detail))]
        assert real == [], (r.name, [(f.issue, f.detail) for f in real])


def test_controller_writes_are_scoped() -> None:
    ca = json.loads(cluster_autoscaler_policy("ws-eks-dev-chat-eks"))
    scale = next(s for s in ca["Statement"] if s["Sid"] == "ScaleOwnGroups")
    assert scale["Condition"]["StringEquals"] == {
        "aws:ResourceTag/k8s.io/cluster-autoscaler/ws-eks-dev-chat-eks": "owned"}
    lbc = json.loads(load_balancer_controller_policy())
    for st in lbc["Statement"]:
        if st["Resource"] == ["*"]:
            assert all(":Describe" in a or ":List" in a for a in st["Action"]), st["Sid"]


# -- GPU nodes -------------------------------------------------------------------------------------


def test_gpu_nodes_scale_from_zero_with_label_and_taint(graph: Graph) -> None:
    ng = graph.one(NODEGROUP, "-eks-gpu")
    i = ng.inputs
    assert i["scalingConfig"]["minSize"] == 0 and i["scalingConfig"]["desiredSize"] == 0
    assert i["scalingConfig"]["maxSize"] == 2
    assert i["amiType"] == "AL2023_x86_64_NVIDIA" and i["instanceTypes"] == ["g6.xlarge"]
    assert i["labels"] == {"warmstart.dev/gpu": "true", "warmstart.dev/variant": "llama31-8b-fp8-l4"}
    assert i["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert "scalingConfig.desiredSize" in ng.options["ignore_changes"]


def test_the_autoscaler_tags_describe_the_node_group(graph: Graph) -> None:
    """What the cluster autoscaler assumes about an empty group must be what its nodes will be."""
    ng = graph.one(NODEGROUP, "-eks-gpu").inputs
    tags = {r.inputs["tag"]["key"]: r.inputs["tag"]["value"] for r in graph.of_type("aws:autoscaling/tag:Tag")}
    labels = {k.removeprefix(f"{CA_TEMPLATE}/label/"): v for k, v in tags.items() if "/label/" in k}
    taints = {k.removeprefix(f"{CA_TEMPLATE}/taint/"): v for k, v in tags.items() if "/taint/" in k}
    assert {k: v for k, v in labels.items() if k.startswith("warmstart.dev/")} == ng["labels"]
    assert labels["node.kubernetes.io/instance-type"] == ng["instanceTypes"][0]
    assert taints == {t["key"]: f"{t['value']}:NoSchedule" for t in ng["taints"]}
    assert tags[f"{CA_TEMPLATE}/resources/nvidia.com/gpu"] == "1"


def test_node_counts_follow_gpus_per_replica() -> None:
    eagle = load_variant("llama31-8b-eagle3-l40s")
    fp8 = load_variant("llama31-8b-fp8-l4")
    assert gpu_nodes_needed(fp8, "g6.xlarge", 2) == 2
    assert gpu_nodes_needed(fp8, "g6.12xlarge", 5) == 2  # 4 one-GPU replicas per node
    assert gpu_nodes_needed(eagle, eagle.gpu.instance_type, 0) == 0
    assert autoscaler_node_template_tags(fp8, "g6.12xlarge")[f"{CA_TEMPLATE}/resources/nvidia.com/gpu"] == "4"


def _user_data_script(lt: dict[str, Any]) -> str:
    msg = email.message_from_string(base64.b64decode(lt["userData"]).decode())
    (part,) = [p for p in msg.walk() if p.get_content_type() == "text/x-shellscript"]
    payload = part.get_payload()
    assert isinstance(payload, str)
    return payload


def test_gpu_launch_template_mounts_the_weight_cache(graph: Graph) -> None:
    lt = graph.one(LT, "-eks-gpu-lt").inputs
    snap = graph.one("aws:ebs/snapshot:Snapshot")
    weights = next(b for b in lt["blockDeviceMappings"] if b["deviceName"] == WEIGHTS_DEVICE)
    assert weights["ebs"]["snapshotId"] == snap.id == load_variant("llama31-8b-fp8-l4").weights_snapshot_id
    assert lt["metadataOptions"]["httpTokens"] == "required"
    assert lt["metadataOptions"]["httpPutResponseHopLimit"] == 1  # pods cannot borrow the node's role
    script = _user_data_script(lt)
    assert f"LABEL={WEIGHTS_LABEL} {WEIGHTS_MOUNT}" in script


def test_the_node_script_passes_shellcheck(graph: Graph, tmp_path: Any) -> None:
    path = tmp_path / "gpu-node.sh"
    path.write_text(_user_data_script(graph.one(LT, "-eks-gpu-lt").inputs))
    out = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_the_gate_role_reads_only_its_key_table(graph: Graph) -> None:
    doc = json.loads(graph.one("aws:iam/rolePolicy:RolePolicy", "-eks-gate-policy").inputs["policy"])
    (st,) = doc["Statement"]
    table = graph.one("aws:dynamodb/table:Table")
    assert st["Resource"] == [table.outputs["arn"], table.outputs["arn"] + "/index/*"]
    assoc = graph.one("aws:eks/podIdentityAssociation:PodIdentityAssociation", "-eks-gate-identity").inputs
    assert (assoc["namespace"], assoc["serviceAccount"]) == ("ws-eks-dev-chat", "gate")


def test_network_policies_are_enforced_by_the_cni(graph: Graph) -> None:
    cni = graph.one("aws:eks/addon:Addon", "-vpc-cni").inputs
    assert json.loads(cni["configurationValues"]) == {"enableNetworkPolicy": "true"}


def test_a_created_cluster_keeps_its_api_private_but_for_named_cidrs(graph: Graph) -> None:
    vpc = graph.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert vpc["endpointPrivateAccess"] is True
    assert vpc["publicAccessCidrs"] == ["203.0.113.0/24"]
    enc = graph.one("aws:eks/cluster:Cluster").inputs["encryptionConfig"]
    assert enc["resources"] == ["secrets"]


# -- adopting a cluster, settings, the stack ------------------------------------------------------


def test_an_existing_cluster_is_adopted_not_created(pulumi_record: Recorder) -> None:
    ep = parse_endpoint({"name": "chat", "environment": "eks-dev", "variant": "llama31-8b-fp8-l4",
                         "allow_http": True})

    def program() -> None:
        EksDeployment("chat", EksDeploymentArgs(
            endpoint=ep, variant=load_variant(ep.variant), region="us-east-1",
            image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-runtime:0.1.0",
            eks=EksSettings(cluster_name="platform-prod")))

    g = pulumi_record(program)
    assert g.of_type("aws:eks/cluster:Cluster") == [] and g.of_type("aws:eks/addon:Addon") == []
    for ng in g.of_type(NODEGROUP):
        assert ng.inputs["clusterName"] == "platform-prod"
    assert {r.inputs["clusterName"] for r in g.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")} \
        == {"platform-prod"}
    assert policy.check(g) == []


@pytest.mark.parametrize("raw, message", [
    ({"clusterNme": "x"}, "warmstart:eks.clusterNme is not a known setting"),
    ({"publicApiCidrs": ["0.0.0.0/0"]}, "publicApiCidrs contains 0.0.0.0/0"),
    ({"storeUrl": "memcached://x"}, "storeUrl='memcached://x' is not a Redis URL"),
    ({"publicApiCidrs": "10.0.0.0/8"}, "publicApiCidrs='10.0.0.0/8' must be a list"),
])
def test_bad_eks_settings_fail_with_one_line(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        EksSettings.parse(raw)
    assert "\n" not in str(e.value)


def test_the_stack_selects_its_substrate() -> None:
    assert load_stack(STACK).substrate == "eks"
    values = read_stack_file(STACK)
    with pytest.raises(ConfigError, match="warmstart:substrate='gke' is not available; use one of ec2, eks"):
        parse_stack_config({**values, "warmstart:substrate": "gke"})


def test_eks_dev_never_collides_with_dev() -> None:
    assert load_stack(STACK).environment != load_stack("dev").environment


def test_a_domain_without_a_certificate_is_refused(pulumi_record: Recorder) -> None:
    ep = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "domain": "llm.example.com"})

    def program() -> None:
        EksDeployment("chat", EksDeploymentArgs(endpoint=ep, variant=load_variant(ep.variant), region="us-east-1",
                                                image_uri="r/i:1"))

    with pytest.raises(Exception, match="needs warmstart:eks.certificateArn"):
        pulumi_record(program)


def test_preview_cli_renders_the_cluster_deployment() -> None:
    out = subprocess.run([sys.executable, "-m", "warmstart", "preview", "--stack", STACK, "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    types = {r["type"] for r in json.loads(out.stdout)["resources"]}
    assert {"warmstart:eks:Deployment", "warmstart:eks:Cluster", "warmstart:eks:Workloads",
            "aws:eks/cluster:Cluster", NODEGROUP, "kubernetes:apps/v1:Deployment",
            "kubernetes:networking.k8s.io/v1:Ingress", "kubernetes:helm.sh/v3:Release",
            "kubernetes:apps/v1:DaemonSet"} <= types


class ProviderRecordingMocks(AwsMocks):
    """The mocked engine also notes which provider instance manages each resource."""

    def __init__(self) -> None:
        super().__init__("us-east-1")
        self.provider_of: dict[str, str | None] = {}

    def new_resource(self, args: pmocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.provider_of[args.name] = args.provider
        return super().new_resource(args)


def test_every_kubernetes_object_goes_to_the_endpoints_cluster(pulumi_record: Recorder) -> None:
    """Not to whatever cluster the operator's ambient kubeconfig points at."""
    ep = parse_endpoint({"name": "chat", "environment": "eks-dev", "variant": "llama31-8b-fp8-l4",
                         "allow_http": True})
    mocks = ProviderRecordingMocks()

    def program() -> None:
        EksDeployment("chat", EksDeploymentArgs(endpoint=ep, variant=load_variant(ep.variant), region="us-east-1",
                                                image_uri="r/i:1"))

    g = pulumi_record(program, mocks=mocks)
    k8s_objects = [r.name for r in g if r.type.startswith("kubernetes:")]
    assert len(k8s_objects) > 15
    for name in k8s_objects:
        ref = mocks.provider_of[name]
        assert ref is not None and "pulumi:providers:kubernetes::chat-eks-k8s::" in ref, (name, ref)


def test_preview_reports_a_bad_eks_setting_in_one_line(tmp_path: Any) -> None:
    from stacks.config import stack_file

    text = stack_file(STACK).read_text().replace("systemInstanceType:", "systemInstanceTyp:")
    (tmp_path / f"Pulumi.{STACK}.yaml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "warmstart", "preview", "--stack", STACK, "--stack-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: warmstart:eks.systemInstanceTyp is not a known setting; use one of clusterName, kubeconfig, "
        "kubernetesVersion, publicApiCidrs, systemInstanceType, storeUrl, certificateArn"]


def test_an_adopted_cluster_can_bring_its_own_kubeconfig(pulumi_record: Recorder, tmp_path: Any) -> None:
    from tests.support.k8s_manifests import unsecret
    from tests.support.kube_api import write_kubeconfig

    path = write_kubeconfig(tmp_path / "kubeconfig", "https://platform.example:6443", token="t")
    settings = EksSettings.parse({"clusterName": "platform-prod", "kubeconfig": str(path)})
    ep = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True})

    def program() -> None:
        EksDeployment("chat", EksDeploymentArgs(endpoint=ep, variant=load_variant(ep.variant), region="us-east-1",
                                                image_uri="r/i:1", eks=settings))

    g = pulumi_record(program)
    prov = g.one("pulumi:providers:kubernetes")
    assert unsecret(prov.inputs["kubeconfig"]) == path.read_text()
    with pytest.raises(ConfigError, match="kubeconfig is for an adopted cluster; set warmstart:eks.clusterName"):
        EksSettings.parse({"kubeconfig": str(path)})
    with pytest.raises(ConfigError, match="cannot be read"):
        EksSettings.parse({"clusterName": "c", "kubeconfig": str(tmp_path / "missing")})
