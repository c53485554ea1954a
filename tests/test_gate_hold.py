"""Capacity short but growing: hold (SSE keep-alives for streams), wake the pool once from zero,
then 503 + Retry-After at the hold bound.

The gate runs in-process (werkzeug's threaded server on a real port) so the test can hand
`create_app` a pool that scales the way a real backend does: at zero until woken, then `starting`
for a while, then ready with the deterministic upstream as its replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from werkzeug.serving import make_server

from runtime.gate.app import create_app
from runtime.gate.config import GateConfig
from runtime.gate.keys import CachedKeyStore, open_key_store
from runtime.gate.store import AdmissionStore, MemoryStore, open_store
from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool
from tests.support.net import free_port
from tests.support.upstream import UpstreamProcess

MSGS = [{"role": "user", "content": "hi"}]


class ScalingPool(ReplicaPool):
    """Zero replicas until woken; `starting` for `boot_s`; then one ready replica."""

    kind = "test-scaling"

    def __init__(self, url: str, boot_s: float) -> None:
        self.url, self.boot_s = url, boot_s
        self.wakes = 0
        self.woken_at: float | None = None
        self.demand: list[int] = []
        self._lock = threading.Lock()

    def snapshot(self) -> PoolSnapshot:
        if self.woken_at is None:
            return PoolSnapshot()
        if time.monotonic() - self.woken_at < self.boot_s:
            return PoolSnapshot(starting=1, detail={"eta_s": "7"})
        return PoolSnapshot(ready=(Replica("r1", self.url, cap=30),))

    def wake(self) -> None:
        with self._lock:
            self.wakes += 1
            if self.woken_at is None:
                self.woken_at = time.monotonic()

    def report_demand(self, in_flight: int) -> None:
        self.demand.append(in_flight)


class InProcessGate:
    def __init__(self, tmp: Path, pool: ReplicaPool, store: AdmissionStore | None = None, **over: Any) -> None:
        self.cfg = GateConfig.parse({
            "endpoint": "hold-test", "served_name": "test-model", "store": "memory",
            "keys": f"sqlite:{tmp / 'keys.db'}", "pool": {"kind": "static", "upstreams": ["http://127.0.0.1:1"]},
            "hold_timeout_s": 10, "keepalive_interval_s": 0.3, **over,
        })
        raw = open_key_store(self.cfg.keys)
        self.key, _ = raw.create(endpoint="hold-test")
        app = create_app(self.cfg, pool=pool, store=store or MemoryStore(), keys=CachedKeyStore(raw, 1))
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, **kw)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


@pytest.fixture()
def make_gate(tmp_path: Path) -> Iterator[Any]:
    gates: list[InProcessGate] = []

    def make(pool: ReplicaPool, store: AdmissionStore | None = None, **over: Any) -> InProcessGate:
        gates.append(InProcessGate(tmp_path, pool, store, **over))
        return gates[-1]

    yield make
    for g in gates:
        g.stop()


def test_from_zero_wakes_once_and_holds_everyone(make_gate: Any, upstream: UpstreamProcess) -> None:
    pool = ScalingPool(upstream.url, boot_s=1.0)
    gate = make_gate(pool)
    c = gate.client()

    def ask(_: int) -> str:
        r = c.chat.completions.create(model="default", messages=MSGS, extra_body={"ws_test": {"tokens": 2}})
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(20) as ex:
        answers = list(ex.map(ask, range(20)))
    assert answers == ["tok0 tok1"] * 20
    assert pool.wakes == 1
    assert max(pool.demand) >= 1  # held requests count as demand, so the pool can size for them
    assert upstream.stats()["completed"] == 20


def test_held_stream_gets_keepalive_comments_then_tokens(make_gate: Any, upstream: UpstreamProcess) -> None:
    gate = make_gate(ScalingPool(upstream.url, boot_s=1.5))
    body = {"model": "default", "messages": MSGS, "stream": True, "ws_test": {"tokens": 3}}
    with httpx2.stream("POST", gate.url + "/v1/chat/completions", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {gate.key}"}) as r:
        assert r.status_code == 200
        assert r.headers["x-accel-buffering"] == "no" and r.headers["x-request-id"]
        text = "".join(r.iter_text())
    lines = [ln for ln in text.split("\n") if ln]
    keepalives = [ln for ln in lines if ln == ": keep-alive"]
    assert len(keepalives) >= 2
    assert lines.index(": keep-alive") < next(i for i, ln in enumerate(lines) if ln.startswith("data: "))
    assert lines[-1] == "data: [DONE]"
    # and the openai client ignores the comments
    gate2 = make_gate(ScalingPool(upstream.url, boot_s=1.0))
    got = [ch.choices[0].delta.content for ch in gate2.client().chat.completions.create(
        model="default", messages=MSGS, stream=True, extra_body={"ws_test": {"tokens": 2}})]
    assert got == ["tok0 ", "tok1 "]


def test_hold_bound_then_503_with_retry_after(make_gate: Any, upstream: UpstreamProcess) -> None:
    gate = make_gate(ScalingPool(upstream.url, boot_s=3600), hold_timeout_s=1)
    with pytest.raises(openai.InternalServerError) as e:
        gate.client().chat.completions.create(model="default", messages=MSGS)
    assert e.value.status_code == 503 and e.value.code == "capacity_unavailable"
    assert e.value.response.headers["retry-after"] == "7"  # the pool's estimate
    # a stream already committed to 200 ends with an error event instead
    stream = gate.client().chat.completions.create(model="default", messages=MSGS, stream=True)
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert "No replica had capacity" in str(err.value)


class UnreachablePool(ReplicaPool):
    """A backend whose API is down (the ASG/Kubernetes API unreachable)."""

    kind = "test-unreachable"

    def snapshot(self) -> PoolSnapshot:
        raise ConnectionError("pool API unreachable")

    def wake(self) -> None:
        raise ConnectionError("pool API unreachable")

    def report_demand(self, in_flight: int) -> None:
        raise ConnectionError("pool API unreachable")


def test_a_pool_that_cannot_be_read_is_503_not_500(make_gate: Any) -> None:
    gate = make_gate(UnreachablePool())
    with pytest.raises(openai.InternalServerError) as e:
        gate.client().chat.completions.create(model="default", messages=MSGS)
    assert e.value.status_code == 503 and e.value.code == "pool_unavailable"
    assert httpx2.get(gate.url + "/healthz").status_code == 503


def test_an_unreachable_redis_is_503_and_unhealthy(make_gate: Any, upstream: UpstreamProcess) -> None:
    dead = open_store(f"redis://127.0.0.1:{free_port()}/0", "hold-test")
    gate = make_gate(ScalingPool(upstream.url, boot_s=0), store=dead)
    gate.client().models.list()  # no quota, so no store: still served
    rec: list[httpx2.Response] = []
    with pytest.raises(openai.InternalServerError) as e:
        gate.client(http_client=httpx2.Client(event_hooks={"response": [rec.append]})).chat.completions.create(
            model="default", messages=MSGS)
    assert e.value.status_code == 503 and e.value.code == "store_unavailable"
    assert rec[0].headers["retry-after"] == "2"
    assert httpx2.get(gate.url + "/healthz").status_code == 503
