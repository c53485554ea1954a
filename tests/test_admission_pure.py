"""The pure admission core: exhaustive properties with hypothesis (no store, no clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.gate.admission import (
    MAX_RETRY_AFTER_S,
    Admitted,
    KeyLimits,
    KeyUsage,
    Rejected,
    ReplicaSlot,
    budget_of,
    busy_retry_after,
    decide,
    gcra,
    pick_replica,
    seconds_to_day_end,
)

NOW = 1_800_000_000.0
KEY = KeyLimits("h")

replicas_st = st.lists(
    st.builds(ReplicaSlot, id=st.uuids().map(str), cap=st.integers(1, 40), in_flight=st.integers(0, 45)),
    max_size=8,
)


@given(replicas_st, st.integers(1, 400))
def test_never_admits_beyond_budget_or_a_full_replica(replicas: list[ReplicaSlot], plan_max: int) -> None:
    total = sum(r.in_flight for r in replicas)
    d = decide(NOW, KEY, KeyUsage(), replicas, total, plan_max)
    if isinstance(d, Admitted):
        assert total < budget_of(replicas, plan_max) <= plan_max
        chosen = next(r for r in replicas if r.id == d.replica_id)
        assert chosen.in_flight < chosen.cap
        assert chosen.headroom == max(r.headroom for r in replicas)
        assert d.in_flight == total + 1
    else:
        assert d.reason in ("budget", "capacity", "no_replicas")
        assert not replicas or total >= budget_of(replicas, plan_max) or pick_replica(replicas) is None


def test_budget_is_replicas_times_cap_never_above_plan() -> None:
    three = [ReplicaSlot(str(i), 30) for i in range(3)]
    assert budget_of(three, 240) == 90
    assert budget_of([ReplicaSlot(str(i), 30) for i in range(9)], 240) == 240
    full = decide(NOW, KEY, KeyUsage(), three, 90, 240)
    assert isinstance(full, Rejected) and full.reason == "capacity"  # short of replicas: may grow
    plan_full = decide(NOW, KEY, KeyUsage(), [ReplicaSlot(str(i), 30) for i in range(9)], 240, 240)
    assert isinstance(plan_full, Rejected) and plan_full.reason == "budget" and plan_full.status == 429


def test_checks_run_in_order_and_rejections_commit_nothing() -> None:
    slots = [ReplicaSlot("a", 1, 1)]
    key = KeyLimits("h", rate_per_min=60, daily_cap=5, expires_at=NOW + 10)
    d = decide(NOW, key, KeyUsage(day_count=5), slots, 1, 240)
    assert isinstance(d, Rejected) and d.reason == "daily_cap" and not d.should_retry
    assert d.headers.reset_s == seconds_to_day_end(NOW)
    expired = decide(NOW + 11, key, KeyUsage(), slots, 1, 240)
    assert isinstance(expired, Rejected) and expired.status == 403
    ok = decide(NOW, key, KeyUsage(day_count=4), [ReplicaSlot("a", 2, 1)], 1, 240)
    assert isinstance(ok, Admitted) and ok.new_day_count == 5 and ok.headers.limit == 60


@settings(max_examples=300)
@given(st.floats(0.5, 600), st.lists(st.floats(0, 200), min_size=1, max_size=60))
def test_gcra_retry_after_is_exact(rate: float, gaps: list[float]) -> None:
    tat: float | None = None
    now = NOW
    for gap in gaps:
        now += gap
        r = gcra(tat, now, rate)
        if r.allowed:
            tat = r.new_tat
            assert 0 <= r.headers.remaining < r.headers.limit
        else:
            assert r.retry_after_s > 0
            assert gcra(tat, now + r.retry_after_s, rate).allowed
            assert not gcra(tat, now + r.retry_after_s * 0.999 - 1e-9, rate).allowed


@given(st.floats(1, 120), st.lists(st.floats(0, 5), min_size=1, max_size=200))
def test_gcra_never_exceeds_burst_plus_rate(rate: float, gaps: list[float]) -> None:
    tat: float | None = None
    now = NOW
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        r = gcra(tat, now, rate)
        if r.allowed:
            tat = r.new_tat
            admitted.append(now)
    burst = max(1, int(rate))
    for i, start in enumerate(admitted):
        window = [t for t in admitted[i:] if t - start < 60]
        assert len(window) <= burst + rate + 1e-6


def test_fresh_key_gets_a_full_minute_of_burst() -> None:
    tat = None
    for i in range(10):
        r = gcra(tat, NOW, 10)
        assert r.allowed and r.headers.remaining == 9 - i
        tat = r.new_tat
    denied = gcra(tat, NOW, 10)
    assert not denied.allowed and abs(denied.retry_after_s - 6.0) < 1e-9


@given(st.floats(0, 10_000), st.integers(0, 10_000))
def test_busy_retry_after_is_bounded(mean: float, n: int) -> None:
    assert 0.05 <= busy_retry_after(mean, n) <= MAX_RETRY_AFTER_S


def test_reset_header_format_matches_openai() -> None:
    from runtime.gate.app import fmt_duration

    assert [fmt_duration(s) for s in (0, 0.0201, 0.9999, 1.5, 59.9, 60, 360.2, 3723)] == [
        "0s", "21ms", "1000ms", "1.5s", "59.9s", "1m0s", "6m1s", "1h2m3s"]
