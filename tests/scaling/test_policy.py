"""The scaling rules and the demand record, exhaustively (hypothesis): pure functions, no AWS."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from runtime.scaling.coordination import BUCKET_S, MemoryCoordinator
from runtime.scaling.policy import Limits, idle_target, scale_out_target, wake_target


@st.composite
def limits(draw: st.DrawFn) -> Limits:
    mx = draw(st.integers(1, 64))
    mn = draw(st.integers(0, mx))
    return Limits(min_replicas=mn, max_replicas=mx, target_per_replica=draw(st.integers(1, 128)),
                  idle_timeout_s=draw(st.floats(1, 3600)))


@given(limits(), st.integers(0, 10_000), st.integers(0, 64))
def test_scale_out_is_the_ceil_rule_and_only_raises(lim: Limits, in_flight: int, current: int) -> None:
    d = scale_out_target(in_flight, current, lim)
    needed = max(lim.min_replicas, min(lim.max_replicas, math.ceil(in_flight / lim.target_per_replica)))
    if needed > current:
        assert d is not None and d.desired == needed
        assert lim.min_replicas <= d.desired <= lim.max_replicas
    else:
        assert d is None


@given(limits(), st.integers(0, 64))
def test_wake_only_from_zero_and_to_the_floor(lim: Limits, current: int) -> None:
    d = wake_target(current, lim)
    if current == 0:
        assert d is not None and d.desired == min(max(1, lim.min_replicas), lim.max_replicas)
    else:
        assert d is None


@given(limits(), st.integers(0, 64), st.integers(0, 1000), st.floats(0, 7200))
def test_idle_goes_to_zero_only_for_flex_after_a_whole_quiet_window(
        lim: Limits, current: int, peak: int, observed: float) -> None:
    d = idle_target(current, peak, observed, lim)
    if d is not None:
        assert d.desired == 0
        assert lim.flex and current > 0 and peak == 0 and observed >= lim.idle_timeout_s
    elif lim.flex and current > 0 and peak == 0:
        assert observed < lim.idle_timeout_s


@given(st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 500)), max_size=50),
       st.floats(0, 1000), st.floats(0, 1000))
def test_peak_since_is_the_max_over_the_buckets_in_range(events: list[tuple[float, int]], a: float,
                                                         b: float) -> None:
    since, now = min(a, b), max(a, b)
    c = MemoryCoordinator()
    for t, n in events:
        c.record_demand(t, n)
    lo, hi = int(since // BUCKET_S), int(now // BUCKET_S)
    expected = max((n for t, n in events if lo <= int(t // BUCKET_S) <= hi), default=0)
    assert c.peak_since(since, now) == expected


def test_locks_exclude_until_released_or_expired() -> None:
    t = [0.0]
    c = MemoryCoordinator(clock=lambda: t[0])
    lease = c.try_lock("scale", 30)
    assert lease is not None and c.try_lock("scale", 30) is None
    lease.release()
    assert c.try_lock("scale", 30) is not None
    t[0] += 31
    assert c.try_lock("scale", 30) is not None  # the holder died: the lock expired


def test_redis_coordinator_shares_peaks_and_locks_across_gates(redis_url: str) -> None:
    from runtime.scaling.coordination import RedisCoordinator

    a, b = RedisCoordinator(redis_url, "chat"), RedisCoordinator(redis_url, "chat")
    a.record_demand(100.0, 7)
    b.record_demand(101.0, 3)  # lower, same bucket: the other gate's peak stays
    b.record_demand(112.0, 5)
    assert a.peak_since(100.0, 104.0) == 7 and b.peak_since(110.0, 114.0) == 5
    assert a.peak_since(200.0, 300.0) == 0
    assert a.observing_since(500.0) == b.observing_since(600.0) == 100.0
    lease = a.try_lock("scale", 30)
    assert lease is not None and b.try_lock("scale", 30) is None
    lease.release()
    assert b.try_lock("scale", 30) is not None
    assert RedisCoordinator(redis_url, "other").try_lock("scale", 30) is not None  # per endpoint
