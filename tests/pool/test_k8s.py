"""The k8s replica pool against a Kubernetes API server over real HTTP (tests.support.kube_api),
with the real `kubernetes` client configured from a kubeconfig, as an operator's gate would be."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.gate.config import GateConfig
from runtime.pool import k8s as k8s_pool
from runtime.pool.k8s import STOPPED_ANNOTATION, K8sPool, api_client_from_environment
from tests.support.kube_api import KubeApi, write_kubeconfig
from warmstart.errors import ConfigError, OperationError
from warmstart.spec import replicas_needed

NS, DEP = "warmstart", "vllm"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def pool(kube_api: KubeApi, kubeconfig: Path, clock: Clock) -> Iterator[K8sPool]:
    kube_api.add_deployment(NS, DEP, replicas=0)
    p = K8sPool(namespace=NS, deployment=DEP, cap=30, min_replicas=0, max_replicas=4,
                idle_timeout_s=300, clock=clock)
    yield p
    p.close()


def test_empty_deployment_has_no_replicas(pool: K8sPool) -> None:
    snap = pool.snapshot()
    assert snap.ready == () and snap.starting == 0 and not snap.stopped
    assert snap.detail["desired"] == "0"


def test_wake_patches_the_scale_subresource_with_a_precondition(pool: K8sPool, kube_api: KubeApi) -> None:
    pool.wake()
    assert kube_api.replicas(NS, DEP) == 1
    (patch,) = kube_api.patches()
    assert patch.path == f"/apis/apps/v1/namespaces/{NS}/deployments/{DEP}/scale"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["spec"] == {"replicas": 1}
    assert patch.body["metadata"]["resourceVersion"]
    snap = pool.snapshot()
    assert snap.starting == 1 and snap.ready == ()


def test_many_concurrent_wakes_scale_once(pool: K8sPool, kube_api: KubeApi) -> None:
    barrier = threading.Barrier(16)

    def wake() -> None:
        barrier.wait()
        pool.wake()

    threads = [threading.Thread(target=wake) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kube_api.replicas(NS, DEP) == 1
    assert kube_api.scale_writes == 1
    assert len(kube_api.patches()) == 1


def test_two_gates_waking_at_once_write_once(kube_api: KubeApi, kubeconfig: Path) -> None:
    kube_api.add_deployment(NS, DEP, replicas=0)
    gates = [K8sPool(namespace=NS, deployment=DEP, max_replicas=2) for _ in range(2)]
    try:
        # Gate 1 reads the scale, then gate 0 wakes the pool before gate 1 writes.
        kube_api.after_scale_read = lambda api: gates[0].wake()
        gates[1].wake()
        assert kube_api.replicas(NS, DEP) == 1
        assert kube_api.scale_writes == 1
        assert len(kube_api.patches()) == 2  # gate 1's stale write was refused with 409
    finally:
        for g in gates:
            g.close()


def test_wake_does_nothing_when_replicas_are_up(pool: K8sPool, kube_api: KubeApi) -> None:
    kube_api.set_replicas(NS, DEP, 2)
    pool.wake()
    assert kube_api.patches() == []
    assert kube_api.replicas(NS, DEP) == 2


def test_ready_replicas_come_from_ready_endpoints(pool: K8sPool, kube_api: KubeApi) -> None:
    kube_api.set_replicas(NS, DEP, 4)
    kube_api.set_pods(NS, DEP, [
        ("vllm-a", "10.0.3.7", True),
        ("vllm-b", "10.0.4.9", True),
        ("vllm-c", "10.0.5.2", False),   # still warming up: readiness probe not passed
        ("vllm-d", "10.0.5.3", True),    # draining: terminating
    ], terminating=("vllm-d",))
    snap = pool.snapshot()
    assert [(r.id, r.url, r.cap) for r in snap.ready] == [
        ("vllm-a", "http://10.0.3.7:8000", 30),
        ("vllm-b", "http://10.0.4.9:8000", 30),
    ]
    assert snap.starting == 2
    assert pool.ready() == snap.ready


def test_other_services_endpoints_are_not_replicas(kube_api: KubeApi, kubeconfig: Path) -> None:
    kube_api.add_deployment(NS, DEP, replicas=1)
    kube_api.add_deployment(NS, "gate", replicas=2)
    kube_api.set_pods(NS, "gate", [("gate-a", "10.0.1.1", True)])
    kube_api.set_pods(NS, DEP, [("vllm-a", "10.0.3.7", True)])
    p = K8sPool(namespace=NS, deployment=DEP, max_replicas=2)
    try:
        assert [r.id for r in p.snapshot().ready] == ["vllm-a"]
    finally:
        p.close()


def test_snapshot_is_cached_for_the_ttl(pool: K8sPool, kube_api: KubeApi, clock: Clock) -> None:
    pool.snapshot()
    pool.snapshot()
    reads = [r for r in kube_api.requests if r.path.endswith(f"/deployments/{DEP}")]
    assert len(reads) == 1
    clock.t += 2.5
    pool.snapshot()
    reads = [r for r in kube_api.requests if r.path.endswith(f"/deployments/{DEP}")]
    assert len(reads) == 2


def test_demand_scales_out_by_the_rule_and_clamps(pool: K8sPool, kube_api: KubeApi) -> None:
    pool.report_demand(61)  # ceil(61 / 30) = 3
    assert kube_api.replicas(NS, DEP) == 3
    pool.report_demand(500)  # clamped to max 4
    assert kube_api.replicas(NS, DEP) == 4
    pool.report_demand(500)
    assert [p.body["spec"]["replicas"] for p in kube_api.patches()] == [3, 4]


def test_idle_scales_to_zero_only_after_the_timeout(pool: K8sPool, kube_api: KubeApi, clock: Clock) -> None:
    pool.report_demand(30)
    assert kube_api.replicas(NS, DEP) == 1
    pool.report_demand(0)
    clock.t += 299
    pool.report_demand(0)
    assert kube_api.replicas(NS, DEP) == 1
    clock.t += 1
    pool.report_demand(0)
    assert kube_api.replicas(NS, DEP) == 0


def test_activity_resets_the_idle_timer(pool: K8sPool, kube_api: KubeApi, clock: Clock) -> None:
    pool.report_demand(30)
    pool.report_demand(0)
    clock.t += 200
    pool.report_demand(10)  # a request came in: still needs one replica
    clock.t += 200
    pool.report_demand(0)
    assert kube_api.replicas(NS, DEP) == 1
    clock.t += 300
    pool.report_demand(0)
    assert kube_api.replicas(NS, DEP) == 0


def test_active_mode_never_goes_below_min(kube_api: KubeApi, kubeconfig: Path, clock: Clock) -> None:
    kube_api.add_deployment(NS, DEP, replicas=3)
    p = K8sPool(namespace=NS, deployment=DEP, min_replicas=2, max_replicas=4, idle_timeout_s=60, clock=clock)
    try:
        p.report_demand(0)
        clock.t += 61
        p.report_demand(0)
        assert kube_api.replicas(NS, DEP) == 2
    finally:
        p.close()


def test_a_concurrent_writer_wins_the_race(pool: K8sPool, kube_api: KubeApi) -> None:
    # Between our read of the scale and our write, another gate scales to 3.
    kube_api.after_scale_read = lambda api: api.set_replicas(NS, DEP, 3)
    pool.wake()
    assert kube_api.replicas(NS, DEP) == 3  # our stale write got 409 and did not undo it
    assert len(kube_api.patches()) == 1


def test_a_stopped_endpoint_is_never_woken(kube_api: KubeApi, kubeconfig: Path) -> None:
    kube_api.add_deployment(NS, DEP, replicas=0, annotations={STOPPED_ANNOTATION: "true"})
    p = K8sPool(namespace=NS, deployment=DEP, max_replicas=2)
    try:
        assert p.snapshot().stopped
        p.wake()
        p.report_demand(100)
        assert kube_api.patches() == []
    finally:
        p.close()


def test_unknown_deployment_is_a_clear_error(kube_api: KubeApi, kubeconfig: Path) -> None:
    p = K8sPool(namespace=NS, deployment="nope", max_replicas=2)
    try:
        with pytest.raises(OperationError, match=r"warmstart/nope \(HTTP 404"):
            p.snapshot()
    finally:
        p.close()


def test_wrong_credentials_are_a_clear_error(kube_api: KubeApi, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kube_api.add_deployment(NS, DEP)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", kube_api.url, token="wrong")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    p = K8sPool(namespace=NS, deployment=DEP, max_replicas=2)
    try:
        with pytest.raises(OperationError, match="HTTP 401"):
            p.snapshot()
    finally:
        p.close()


def test_no_credentials_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(OperationError, match="set KUBECONFIG"):
        api_client_from_environment()


def test_an_api_outage_serves_the_last_snapshot(pool: K8sPool, kube_api: KubeApi, clock: Clock) -> None:
    kube_api.set_replicas(NS, DEP, 1)
    kube_api.set_pods(NS, DEP, [("vllm-a", "10.0.3.7", True)])
    before = pool.snapshot()
    kube_api.stop()
    clock.t += 10
    assert pool.snapshot() == before


def test_gate_config_builds_the_pool(kube_api: KubeApi, kubeconfig: Path) -> None:
    kube_api.add_deployment("ws", "ws-dev-chat-vllm", replicas=0)
    cfg = GateConfig.parse({
        "endpoint": "chat", "served_name": "m", "replica_cap": 20,
        "pool": {"kind": "k8s", "namespace": "ws", "deployment": "ws-dev-chat-vllm", "max_replicas": 3},
    })
    p = k8s_pool.from_config(cfg.pool, cap=cfg.replica_cap)
    try:
        p.report_demand(41)
        assert kube_api.replicas("ws", "ws-dev-chat-vllm") == 3
        assert p.cap == 20 and p.service == "ws-dev-chat-vllm"
    finally:
        p.close()


def test_gate_config_k8s_needs_a_deployment() -> None:
    with pytest.raises(ConfigError, match="pool.kind='k8s' needs namespace and deployment"):
        GateConfig.parse({"endpoint": "chat", "served_name": "m", "pool": {"kind": "k8s", "namespace": "ws"}})


def test_a_gate_wakes_the_deployment_and_routes_to_the_ready_pod(
        kube_api: KubeApi, kubeconfig: Path, gate_factory: Any, upstream: Any) -> None:
    """The real gate (gunicorn, pool kind k8s, $KUBECONFIG) in front of a Deployment at zero: the
    first request wakes it through the scale subresource, is held, and is served once the pod's
    endpoint turns ready (its address is the local upstream)."""
    import openai

    kube_api.add_deployment(NS, DEP, replicas=0)
    gate = gate_factory(pool={"kind": "k8s", "namespace": NS, "deployment": DEP, "max_replicas": 2},
                        hold_timeout_s=60)
    key = gate.mint()
    result: dict[str, Any] = {}

    def call() -> None:
        client = openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=0, timeout=120)
        result["r"] = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=4)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 60
    while kube_api.replicas(NS, DEP) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube_api.replicas(NS, DEP) == 1, gate.log()[-2000:]
    kube_api.set_pods(NS, DEP, [("vllm-a", "127.0.0.1", True)], port=upstream.port)
    t.join(timeout=90)
    assert not t.is_alive()
    assert result["r"].choices[0].message.content.startswith("tok0")
    assert [p.body["spec"]["replicas"] for p in kube_api.patches()] == [1]  # one wake, no more
    assert upstream.stats()["completed"] == 1


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 400), st.floats(0, 400, allow_nan=False)), min_size=1, max_size=8))
def test_demand_never_leaves_the_bounds_or_starves(kube_api: KubeApi, kubeconfig: Path,
                                                   steps: list[tuple[int, float]]) -> None:
    """Whatever the demand sequence: replicas stay in [min, max], never fall below what the
    current demand needs, and only fall after a full idle timeout below capacity."""
    name = f"vllm-{uuid.uuid4().hex[:8]}"
    kube_api.add_deployment(NS, name, replicas=0)
    clock = Clock()
    p = K8sPool(namespace=NS, deployment=name, cap=30, min_replicas=0, max_replicas=4, idle_timeout_s=300,
                clock=clock, cache_ttl_s=0)
    try:
        low_since: float | None = None
        before = 0
        for demand, dt in steps:
            clock.t += dt
            p.report_demand(demand)
            now = kube_api.replicas(NS, name)
            needed = replicas_needed(demand, 30, 0, 4)
            assert 0 <= now <= 4
            assert now >= needed
            if now < before:
                assert low_since is not None and clock.t - low_since >= 300
            low_since = (low_since if low_since is not None else clock.t) if needed < now else None
            before = now
    finally:
        p.close()
