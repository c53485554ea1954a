"""The local pool's Flex rule and its refusals, without starting vLLM (the e2e tests do that).

A pool with no demand starts nothing, so these run in milliseconds; `target(now=...)` lets the
idle window pass without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.gate.config import GateConfig
from runtime.pool.local import LocalPool
from warmstart.spec import load_variant


def config(**pool: object) -> GateConfig:
    return GateConfig.parse({
        "endpoint": "local", "served_name": "smollm2-135m", "replica_cap": 30,
        "pool": {"kind": "local", "variant": "smollm2-135m-cpu", **pool},
    })


@pytest.fixture()
def make_pool(tmp_path: Path):  # type: ignore[no-untyped-def]
    pools: list[LocalPool] = []

    def make(clock: Callable[[], float] = time.monotonic, **pool: object) -> LocalPool:
        p = LocalPool(config(**pool), home=tmp_path / "home", weights_dir=tmp_path / "w", standby=False,
                      tick_s=3600, clock=clock)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


def test_no_demand_means_no_replicas(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(max_replicas=3, idle_timeout_s=300)
    assert pool.target() == 0
    snap = pool.snapshot()
    assert snap.ready == () and snap.starting == 0 and not snap.stopped


def test_wake_then_idle_window(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(max_replicas=3, idle_timeout_s=5)
    now = time.monotonic()
    pool._demand.append((now, 1))  # what wake() records, without letting the monitor act on it
    assert pool.target(now) == 1
    assert pool.target(now + 4.9) == 1
    assert pool.target(now + 5.1) == 0  # Flex: idle for idle_timeout_s → zero


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_idle_time_counts_from_the_last_completion_not_the_last_arrival(make_pool) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    pool = make_pool(clock=clock, max_replicas=3, idle_timeout_s=20)
    pool.report_demand(1)  # the request arrives (what the gate reports) at t=1000
    for _ in range(13):  # its stream runs 13 s; the monitor polls vLLM's in-flight once a second
        pool.observe_in_flight(1)
        clock.t += 1
    pool.observe_in_flight(0)  # t=1013: the first poll after the stream finished
    end = clock.t
    # Counted from the arrival, the replica would stop at t=1020, 7 s after the stream ended.
    assert pool.target(1020.5) == 1
    clock.t = end + 19.9
    pool.observe_in_flight(0)  # idle polls are not demand
    assert pool.target() == 1
    assert pool.target(end + 20.1) == 0


def test_in_flight_scales_like_reported_demand(make_pool) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    pool = make_pool(clock=clock, max_replicas=3, idle_timeout_s=10)
    pool.observe_in_flight(61)  # cap 30 → ceil(61/30) = 3
    assert pool.target() == 3
    clock.t += 5
    pool.observe_in_flight(31)  # 30 finished since the last poll: that poll still counts 61
    assert pool.target() == 3
    clock.t += 1
    pool.observe_in_flight(31)
    clock.t += 9.5  # the 61 are out of the window; the 31 still in it
    assert pool.target() == 2
    pool.observe_in_flight(0)  # the 31 finished: their need lasts another window from here
    clock.t += 9.9
    assert pool.target() == 2
    clock.t += 0.2
    assert pool.target() == 0


def test_scale_out_follows_peak_demand_up_to_max(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(max_replicas=3, idle_timeout_s=10)
    now = time.monotonic()
    for t, n in ((now, 1), (now + 1, 3), (now + 2, 2)):
        pool._demand.append((t, n))
    assert pool.target(now + 2) == 3
    assert pool.target(now + 11.5) == 2  # the peak of 3 left the window
    assert pool.target(now + 12.5) == 0


def test_min_replicas_is_a_floor(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(min_replicas=1, max_replicas=2, idle_timeout_s=1)
    assert pool.target(time.monotonic() + 100) == 1


@settings(max_examples=60, deadline=None)
@given(in_flight=st.integers(0, 500), cap=st.integers(1, 64), mx=st.integers(1, 8))
def test_report_demand_is_the_ceil_rule(tmp_path_factory: pytest.TempPathFactory, in_flight: int, cap: int,
                                        mx: int) -> None:
    cfg = GateConfig.parse({
        "endpoint": "local", "served_name": "smollm2-135m", "replica_cap": cap,
        "pool": {"kind": "local", "variant": "smollm2-135m-cpu", "max_replicas": mx},
    })
    pool = LocalPool(cfg, home=tmp_path_factory.mktemp("h"), weights_dir=Path("/nonexistent"), standby=False,
                     tick_s=3600)
    try:
        pool._demand.append((time.monotonic(), 0))
        needed = -(-in_flight // cap)
        with pool._lock:  # record the demand without waking the monitor (it would start vLLM)
            pool._demand.append((time.monotonic(), min(mx, needed)))
        assert pool.target() == min(mx, needed)
    finally:
        pool.close()


def test_refuses_gpu_variants_and_other_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a GPU"):
        LocalPool(config(), variant=load_variant("llama31-8b-fp8-l4"), home=tmp_path, standby=False)
    static = GateConfig.parse({"endpoint": "e", "served_name": "m",
                               "pool": {"kind": "static", "upstreams": ["http://127.0.0.1:1"]}})
    with pytest.raises(ValueError, match="pool.kind='local'"):
        LocalPool(static, home=tmp_path, standby=False)


def test_state_file_after_close(make_pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    pool = make_pool()
    pool.close()
    state = json.loads((tmp_path / "home" / "state.json").read_text())
    assert state["closed"] is True and state["replicas"] == [] and state["standby"] is None


def test_corrupted_cache_is_rehydrated_before_a_start(tmp_path: Path) -> None:
    """The check every replica start runs first: a cache whose weights fail the manifest's sha256
    is rebuilt from the variant's source before vLLM may read it."""
    import shutil

    from runtime.replica import weights
    from tests.support.vllm_server import local_model_dir

    source = local_model_dir()  # the real converted model: the "source" of this variant here
    variant = load_variant("smollm2-135m-cpu").model_copy(update={"model": str(source)})
    cache = tmp_path / "cache"
    weights.hydrate(str(source), cache, progress=lambda _m: None)
    data = bytearray((cache / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the tensors: same size
    (cache / "model.safetensors").write_bytes(bytes(data))
    assert not weights.verify(cache).ok

    pool = LocalPool(config(), variant=variant, home=tmp_path / "home", weights_dir=cache, standby=False,
                     tick_s=3600)
    try:
        pool._check_weights()
    finally:
        pool.close()
    kinds = [e["event"] for e in pool.events]
    assert kinds == ["rehydrating", "rehydrated"]
    assert pool.events[0]["problems"] == ["model.safetensors: sha256 differs from the manifest (corrupted)"]
    assert weights.verify(cache).ok
    assert (cache / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    shutil.rmtree(cache)
