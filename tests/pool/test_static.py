"""The static pool: fixed upstream URLs, always ready, stable ids across gate processes."""

from __future__ import annotations

import pytest

from runtime.gate.app import build_pool
from runtime.gate.config import GateConfig
from runtime.pool.static import StaticPool


def test_replicas_are_ready_with_the_cap_and_url_ids() -> None:
    pool = StaticPool(["http://10.0.0.1:8000/", "http://10.0.0.2:8000/v1", "http://10.0.0.1:8000"], cap=30)
    snap = pool.snapshot()
    assert [r.id for r in snap.ready] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]  # deduplicated
    assert all(r.cap == 30 and r.state == "ready" and r.url == r.id for r in snap.ready)
    assert not snap.growing and not snap.stopped
    pool.wake()
    pool.report_demand(500)
    assert pool.snapshot() == snap


@pytest.mark.parametrize(("upstreams", "cap", "needle"), [
    ([], 30, "at least one upstream"),
    (["10.0.0.1:8000"], 30, r"not an http\(s\) URL"),
    (["http://x:1"], 0, "cap=0"),
])
def test_bad_input_is_refused(upstreams: list[str], cap: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        StaticPool(upstreams, cap)


def test_the_app_builds_it_from_config() -> None:
    cfg = GateConfig.parse({"endpoint": "e", "served_name": "m", "replica_cap": 7,
                            "pool": {"kind": "static", "upstreams": ["http://127.0.0.1:9"]}})
    pool = build_pool(cfg)
    assert isinstance(pool, StaticPool) and pool.snapshot().ready[0].cap == 7
