"""The EKS substrate's Kubernetes objects, rendered from the real eks-dev stack under Pulumi mocks
with the real pulumi-kubernetes classes, checked against the `kubernetes` client's models and the
product's rules (gate-only reachability, non-root, GPU requests == limits, the launcher's argv)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from components.eks_workloads import (
    APP_LABEL,
    GATE,
    GPU_RESOURCE,
    POD_IP_REF,
    STORE,
    VLLM,
    WARMUP_PROBE,
    replica_resources,
)
from runtime.gate.config import GateConfig
from runtime.image.cloudinit import GATE_COMMAND, MODEL_DIR, engine_command
from stacks.config import load_stack
from stacks.preview import Graph
from tests.support.k8s_manifests import manifests, validate, validate_manifest
from tests.support.net import free_port
from tests.support.pulumi_harness import stack_graph
from tests.support.upstream import UpstreamProcess
from warmstart.spec import load_variant

STACK = "eks-dev"
NS = "ws-eks-dev-chat"
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet", "Job")


@pytest.fixture(scope="module")
def graph() -> Graph:
    return stack_graph(STACK)


@pytest.fixture(scope="module")
def docs(graph: Graph) -> list[dict[str, Any]]:
    return manifests(graph)


def one(docs: list[dict[str, Any]], kind: str, name: str, namespace: str = NS) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and d["metadata"].get("namespace", namespace) == namespace]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


# -- schema --------------------------------------------------------------------------------------


def test_the_stack_renders_every_kind_the_endpoint_needs(docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "Service", "Secret", "ServiceAccount", "Role", "RoleBinding",
            "PodDisruptionBudget", "NetworkPolicy", "Ingress", "DaemonSet"} <= kinds


def test_every_manifest_is_schema_valid(docs: list[dict[str, Any]]) -> None:
    errors = [e for d in docs for e in validate_manifest(d)]
    assert errors == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["spec"]["template"]["spec"].update(contaniers=[]), "not a field of V1PodSpec"),
    (lambda d: containers(d)[0].pop("name"), "required by V1Container"),
    (lambda d: d["spec"].update(replicas="two"), "expected int"),
    (lambda d: containers(d)[0]["ports"][0].update(containerPort=True), "expected int"),
    (lambda d: d["spec"].pop("selector"), "required by V1DeploymentSpec"),
    (lambda d: d.update(apiVersion="apps/v9"), "no model V9Deployment"),
])
def test_the_schema_check_catches_mistakes(docs: list[dict[str, Any]], mutate: Any, expected: str) -> None:
    import copy

    bad = copy.deepcopy(one(docs, "Deployment", VLLM))
    mutate(bad)
    assert any(expected in e for e in validate_manifest(bad)), validate_manifest(bad)


def test_the_schema_check_reads_nested_collections() -> None:
    assert validate({"limits": {"cpu": 1}}, "V1ResourceRequirements") == [".limits.cpu: expected str, got 1"]


def test_resource_names_are_unique(graph: Graph) -> None:
    names = [(r.type, r.name) for r in graph]
    assert len(names) == len(set(names))
    objects = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in manifests(graph)]
    assert len(objects) == len(set(objects))


# -- the replica ---------------------------------------------------------------------------------


def test_vllm_runs_exactly_the_launchers_argv_bound_to_the_pod_ip(docs: list[dict[str, Any]]) -> None:
    cfg = load_stack(STACK)
    variant = cfg.variant_of(cfg.endpoints[0])
    (c,) = containers(one(docs, "Deployment", VLLM))
    cmd = engine_command(variant, host=POD_IP_REF)
    assert c["command"] == list(cmd.argv)
    assert "args" not in c
    assert c["command"][c["command"].index("--host") + 1] == "$(POD_IP)"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # $(POD_IP) expands only from a variable defined before it is used: it must be in env.
    for k, v in cmd.env.items():
        assert env[k]["value"] == v


def test_gpu_requests_equal_limits(docs: list[dict[str, Any]]) -> None:
    gpu_containers = [c for d in docs if d["kind"] in WORKLOADS for c in containers(d)
                      if GPU_RESOURCE in (c.get("resources", {}).get("limits") or {})
                      or GPU_RESOURCE in (c.get("resources", {}).get("requests") or {})]
    assert gpu_containers, "no container asks for a GPU"
    for c in gpu_containers:
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]


def test_the_replica_gets_its_variants_gpus_and_its_share_of_the_node(docs: list[dict[str, Any]]) -> None:
    (c,) = containers(one(docs, "Deployment", VLLM))
    assert c["resources"]["limits"] == {GPU_RESOURCE: "1", "cpu": "3", "memory": "11Gi"}
    big = load_variant("llama31-8b-eagle3-l40s")
    assert replica_resources(big, "g6e.12xlarge")[0] == str(int(47 * big.engine.tensor_parallel_size / 4))


def test_weights_come_read_only_from_the_snapshot_disk(docs: list[dict[str, Any]]) -> None:
    dep = one(docs, "Deployment", VLLM)
    (c,) = containers(dep)
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert vols["model"]["hostPath"] == {"path": MODEL_DIR, "type": "Directory"}
    assert mounts["model"] == {"name": "model", "mountPath": MODEL_DIR, "readOnly": True}
    assert c["command"][c["command"].index("--model") + 1] == MODEL_DIR


def test_the_replica_waits_for_gpu_nodes_of_its_variant(docs: list[dict[str, Any]]) -> None:
    spec = one(docs, "Deployment", VLLM)["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["warmstart.dev/gpu"] == "true"
    assert spec["nodeSelector"]["warmstart.dev/variant"] == "llama31-8b-fp8-l4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_streams_can_drain_before_a_replica_is_killed(docs: list[dict[str, Any]]) -> None:
    cfg = load_stack(STACK)
    for name in (VLLM, GATE):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > cfg.endpoints[0].request_timeout_s
        (c,) = containers(one(docs, "Deployment", name))
        assert c["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5


def test_the_gate_owns_the_replica_count(graph: Graph) -> None:
    dep = graph.one("kubernetes:apps/v1:Deployment", "-k8s-vllm")
    assert "spec.replicas" in dep.options["ignore_changes"]
    assert dep.inputs["spec"]["replicas"] == 0  # Flex starts at zero


def test_ready_only_after_a_one_token_completion(docs: list[dict[str, Any]]) -> None:
    (c,) = containers(one(docs, "Deployment", VLLM))
    probe = c["startupProbe"]["exec"]["command"]
    assert probe == ["python3", "-c", WARMUP_PROBE]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 20 * 60
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def _probe(port: int, model: str) -> int:
    env = {**os.environ, "POD_IP": "127.0.0.1", "VLLM_PORT": str(port), "SERVED_NAME": model}
    return subprocess.run([sys.executable, "-c", WARMUP_PROBE], env=env, capture_output=True, timeout=60).returncode


def test_the_warmup_probe_passes_on_a_completion(upstream: UpstreamProcess) -> None:
    assert _probe(upstream.port, upstream.model) == 0
    assert upstream.stats()["completed"] == 1


@pytest.fixture()
def failing_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield int(srv.server_address[1])
    srv.shutdown()


def test_the_warmup_probe_fails_while_the_engine_cannot_answer(failing_server: int) -> None:
    assert _probe(failing_server, "m") != 0
    assert _probe(free_port(), "m") != 0  # nothing listening yet (still loading)


# -- security ------------------------------------------------------------------------------------


def test_containers_are_non_root_with_read_only_root_fs(docs: list[dict[str, Any]]) -> None:
    ours = [d for d in docs if d["kind"] in WORKLOADS and d["metadata"].get("namespace") == NS]
    assert {d["metadata"]["name"] for d in ours} == {VLLM, GATE, STORE}
    for d in ours:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in containers(d):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_the_device_plugin_is_confined_though_it_runs_as_root(docs: list[dict[str, Any]]) -> None:
    (c,) = containers(one(docs, "DaemonSet", "nvidia-device-plugin", "kube-system"))
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_only_the_gate_has_an_api_token(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        if d["kind"] in WORKLOADS and d["metadata"].get("namespace") == NS:
            mounted = d["spec"]["template"]["spec"]["automountServiceAccountToken"]
            assert mounted is (d["metadata"]["name"] == GATE), d["metadata"]["name"]


def test_the_gate_role_allows_only_what_the_pool_calls(docs: list[dict[str, Any]]) -> None:
    rules = one(docs, "Role", "gate-scaler")["rules"]
    granted = {(r["apiGroups"][0], r["resources"][0], v, tuple(r.get("resourceNames", ())))
               for r in rules for v in r["verbs"]}
    assert granted == {
        ("apps", "deployments", "get", (VLLM,)),
        ("apps", "deployments/scale", "get", (VLLM,)),
        ("apps", "deployments/scale", "patch", (VLLM,)),
        ("discovery.k8s.io", "endpointslices", "list", ()),
    }
    binding = one(docs, "RoleBinding", "gate-scaler")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": GATE, "namespace": NS}]


# -- reachability ----------------------------------------------------------------------------------


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] == "Deployment" and d["metadata"].get("namespace") == NS}


def _ingress_peers(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[tuple[dict[str, Any], Any]]:
    """(peer, ports) of every rule admitting traffic to pods with `labels`; a rule with no `from`
    admits everyone, which is returned as the peer {}."""
    out = []
    for np in docs:
        if np["kind"] != "NetworkPolicy" or np["metadata"]["namespace"] != NS:
            continue
        spec = np["spec"]
        if not matches(spec["podSelector"], labels) or "Ingress" not in spec["policyTypes"]:
            continue
        for rule in spec.get("ingress") or []:
            for peer in rule.get("from") or [{}]:
                out.append((peer, rule.get("ports")))
    return out


def _isolated(docs: list[dict[str, Any]], labels: dict[str, str], kind: str = "Ingress") -> bool:
    return any(np["kind"] == "NetworkPolicy" and np["metadata"]["namespace"] == NS
               and matches(np["spec"]["podSelector"], labels) and kind in np["spec"]["policyTypes"]
               for np in docs)


def test_vllm_is_reachable_only_from_the_gate(docs: list[dict[str, Any]]) -> None:
    pods = _pods(docs)
    assert _isolated(docs, pods[VLLM])
    peers = _ingress_peers(docs, pods[VLLM])
    assert peers, "vLLM admits nothing at all"
    for peer, ports in peers:
        assert set(peer) == {"podSelector"}, peer  # no ipBlock, no namespaceSelector, not "anyone"
        sel = peer["podSelector"]
        admitted = [name for name, labels in pods.items() if matches(sel, labels)]
        assert admitted == [GATE]
        assert ports == [{"port": 8000, "protocol": "TCP"}]


def test_vllm_and_the_store_cannot_call_out(docs: list[dict[str, Any]]) -> None:
    pods = _pods(docs)
    for name in (VLLM, STORE):
        assert _isolated(docs, pods[name], "Egress")
        for np in docs:
            if np["kind"] == "NetworkPolicy" and matches(np["spec"]["podSelector"], pods[name]):
                assert not np["spec"].get("egress"), np["metadata"]["name"]


def test_the_store_is_reachable_only_from_the_gate(docs: list[dict[str, Any]]) -> None:
    pods = _pods(docs)
    for peer, _ in _ingress_peers(docs, pods[STORE]):
        assert [n for n, labels in pods.items() if matches(peer.get("podSelector", {}), labels)] == [GATE]


def test_the_gate_is_reachable_from_the_vpc_only_on_its_port(docs: list[dict[str, Any]], graph: Graph) -> None:
    pods = _pods(docs)
    peers = _ingress_peers(docs, pods[GATE])
    vpc = graph.one("aws:ec2/vpc:Vpc")
    assert peers == [({"ipBlock": {"cidr": vpc.inputs["cidrBlock"]}}, [{"port": 8080, "protocol": "TCP"}])]


def test_a_default_deny_covers_every_pod(docs: list[dict[str, Any]]) -> None:
    deny = one(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and not deny["spec"].get("ingress")


# -- gate, edge, availability --------------------------------------------------------------------


def test_the_gate_config_points_its_pool_at_the_vllm_deployment(docs: list[dict[str, Any]]) -> None:
    import json

    secret = one(docs, "Secret", "gate-config")
    cfg = GateConfig.parse(json.loads(secret["stringData"]["gate.json"]))
    assert cfg.pool.kind == "k8s"
    assert (cfg.pool.namespace, cfg.pool.deployment, cfg.pool.service) == (NS, VLLM, VLLM)
    assert one(docs, "Service", VLLM)["spec"]["clusterIP"] == "None"  # EndpointSlices list pod IPs
    assert cfg.keys == "dynamodb:ws-eks-dev-chat-keys"
    assert cfg.store.startswith("redis://:") and f"@{STORE}.{NS}.svc.cluster.local:6379/0" in cfg.store
    assert (cfg.pool.min_replicas, cfg.pool.max_replicas, cfg.replica_cap) == (0, 2, 30)
    (c,) = containers(one(docs, "Deployment", GATE))
    assert c["command"] == list(GATE_COMMAND)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == GATE_COMMAND[GATE_COMMAND.index("--config") + 1]


def test_the_gate_config_and_store_password_stay_secret(graph: Graph) -> None:
    for suffix in ("-gate-config", "-store-auth"):
        secret = graph.one("kubernetes:core/v1:Secret", suffix)
        assert "stringData" in secret.options["additional_secret_outputs"]
    store = one(manifests(graph), "Deployment", STORE)
    (c,) = containers(store)
    assert "env" not in c  # the password is a mounted file, never an environment variable
    auth = next(v for v in store["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "store-auth"
    assert c["command"][:2] == ["valkey-server", "/etc/valkey/auth.conf"]


def test_the_alb_ingress(docs: list[dict[str, Any]]) -> None:
    ing = one(docs, "Ingress", GATE)
    a = ing["metadata"]["annotations"]
    assert ing["spec"]["ingressClassName"] == "alb"
    assert a["alb.ingress.kubernetes.io/target-type"] == "ip"
    idle = int(a["alb.ingress.kubernetes.io/load-balancer-attributes"].split("idle_timeout.timeout_seconds=")[1]
               .split(",")[0])
    assert idle >= 300
    assert "least_outstanding_requests" in a["alb.ingress.kubernetes.io/target-group-attributes"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == GATE and one(docs, "Service", GATE)["spec"]["selector"] == {APP_LABEL: GATE}


def test_disruption_budgets_cover_both_tiers(docs: list[dict[str, Any]]) -> None:
    pods = _pods(docs)
    for name in (VLLM, GATE):
        pdb = one(docs, "PodDisruptionBudget", name)
        assert matches(pdb["spec"]["selector"], pods[name])
        assert pdb["spec"]["maxUnavailable"] == 1


def test_https_when_a_certificate_is_given(pulumi_record: Any) -> None:
    from components.eks_workloads import EksWorkloads, EksWorkloadsArgs
    from warmstart.spec import parse_endpoint

    ep = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "domain": "llm.example.com",
                         "request_timeout_s": 900})
    cert = "arn:aws:acm:us-east-1:123456789012:certificate/0b1c2d3e"

    def program() -> None:
        EksWorkloads("chat", EksWorkloadsArgs(
            endpoint=ep, variant=load_variant(ep.variant), image_uri="r/i@sha256:" + "0" * 64,
            store_url="rediss://cache.example:6379/0", keys_table="t", vpc_cidr="10.40.0.0/16",
            certificate_arn=cert))

    g = pulumi_record(program)
    docs = manifests(g)
    a = one(docs, "Ingress", GATE, "ws-dev-chat")["metadata"]["annotations"]
    assert a["alb.ingress.kubernetes.io/certificate-arn"] == cert
    assert a["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert '"HTTPS": 443' in a["alb.ingress.kubernetes.io/listen-ports"]
    # request 900 + hold 120 (default) + 30 s margin (components/timeouts.py)
    assert "idle_timeout.timeout_seconds=1050" in a["alb.ingress.kubernetes.io/load-balancer-attributes"]
    # An external store: no Valkey in the namespace.
    assert not [d for d in docs if d["metadata"]["name"] == STORE]
    assert [e for d in docs for e in validate_manifest(d)] == []


def test_a_stopped_endpoint_is_scaled_to_zero_by_the_deploy(pulumi_record: Any) -> None:
    from components.eks_workloads import EksWorkloads, EksWorkloadsArgs
    from runtime.pool.k8s import STOPPED_ANNOTATION
    from warmstart.spec import parse_endpoint

    def render(stopped: bool) -> Graph:
        ep = parse_endpoint({"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True, "plan": "team",
                             "mode": "active", "min_replicas": 1, "stopped": stopped})

        def program() -> None:
            EksWorkloads("chat", EksWorkloadsArgs(
                endpoint=ep, variant=load_variant(ep.variant), image_uri="r/i:1", store_url="redis://r:6379/0",
                keys_table="t", vpc_cidr="10.40.0.0/16"))

        return pulumi_record(program)

    running = render(False).one("kubernetes:apps/v1:Deployment", "-vllm")
    stopped = render(True).one("kubernetes:apps/v1:Deployment", "-vllm")
    assert running.inputs["spec"]["replicas"] == 1 and running.options["ignore_changes"] == ["spec.replicas"]
    assert stopped.inputs["spec"]["replicas"] == 0 and stopped.options["ignore_changes"] == []
    assert stopped.inputs["metadata"]["annotations"] == {STOPPED_ANNOTATION: "true"}
    assert STOPPED_ANNOTATION not in (running.inputs["metadata"].get("annotations") or {})
