"""Admission decisions as pure functions: no clock, no I/O, no locks.

One call decides one request, in this order (DESIGN.md "Leases"):

    0. key scope (the key's endpoint is this store's endpoint)                    -> 403
    1. key expiry (time from the store: Redis TIME, or the memory store's clock)  -> 403
    2. daily cap (UTC day)                                                         -> 429, do not retry
    3. per-key rate (GCRA)                                                         -> 429 + exact Retry-After
    4. endpoint concurrency budget = min(ready replicas x cap, plan cap)           -> 429, or hold if growing
    5. the ready replica with the most headroom under its cap                     -> a lease on it

Nothing is committed unless every check passes, so a rejected request consumes no quota.
The memory store calls `decide` directly; the Redis store runs the same steps in `admit.lua`,
and both pass the same contract tests (tests/test_admission_store.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

DAY_S = 86400.0
MAX_RETRY_AFTER_S = 120.0

RejectReason = Literal["scope", "expired", "daily_cap", "rate", "budget", "capacity", "no_replicas"]


@dataclass(frozen=True)
class KeyLimits:
    """What admission needs to know about the caller's key (resolved from its KeyRecord)."""

    key_hash: str
    rate_per_min: float | None = None
    daily_cap: int | None = None
    expires_at: float | None = None
    endpoint: str | None = None  # the key's scope; checked again here, next to the quota it spends


@dataclass(frozen=True)
class ReplicaSlot:
    """A ready replica as admission sees it: its cap and the leases it holds now."""

    id: str
    cap: int
    in_flight: int = 0

    @property
    def headroom(self) -> int:
        return self.cap - self.in_flight


@dataclass(frozen=True)
class KeyUsage:
    """Per-key state: the GCRA theoretical arrival time and today's admitted count."""

    tat: float | None = None  # seconds since the epoch; None = never seen (or fully replenished)
    day_count: int = 0


@dataclass(frozen=True)
class RateHeaders:
    """The x-ratelimit-* values for the response (limit, remaining, seconds to reset)."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class Admitted:
    replica_id: str
    headers: RateHeaders
    in_flight: int  # endpoint-wide, including this request
    new_tat: float | None
    new_day_count: int
    admitted: Literal[True] = True


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    headers: RateHeaders
    retry_after_s: float | None  # None: the caller computes it (concurrency) or must not retry
    in_flight: int
    admitted: Literal[False] = False

    @property
    def status(self) -> int:
        return {"scope": 403, "expired": 403, "no_replicas": 503}.get(self.reason, 429)

    @property
    def should_retry(self) -> bool:
        return self.reason not in ("scope", "expired", "daily_cap")


Decision = Admitted | Rejected


def day_index(now: float) -> int:
    return int(now // DAY_S)


def seconds_to_day_end(now: float) -> float:
    return (day_index(now) + 1) * DAY_S - now


@dataclass(frozen=True)
class Gcra:
    """GCRA for `rate_per_min` requests a minute with a burst of one minute's worth.

    emission interval T = 60 / rate; burst tolerance tau = (burst - 1) * T. A request at `now` is
    allowed when tat - now <= tau; then tat' = max(tat, now) + T. When refused, it would be
    allowed exactly at tat - tau, which is the Retry-After.
    """

    allowed: bool
    new_tat: float
    retry_after_s: float
    headers: RateHeaders


def burst_of(rate_per_min: float) -> int:
    return max(1, math.floor(rate_per_min))


def gcra(tat: float | None, now: float, rate_per_min: float) -> Gcra:
    if rate_per_min <= 0:
        raise ValueError(f"rate_per_min={rate_per_min} must be > 0")
    interval = 60.0 / rate_per_min
    burst = burst_of(rate_per_min)
    tau = (burst - 1) * interval
    base = now if tat is None else max(tat, now)
    limit = burst
    # 1 us of slack: at epoch scale, float rounding must not refuse a request that is exactly due.
    if base - now - tau > 1e-6:
        retry = base - tau - now
        remaining = 0
        return Gcra(False, base, retry, RateHeaders(limit, remaining, base - now))
    new_tat = base + interval
    remaining = max(0, math.floor((now + tau - (new_tat - interval)) / interval + 1e-9))
    return Gcra(True, new_tat, 0.0, RateHeaders(limit, remaining, new_tat - now))


def key_headers(now: float, key: KeyLimits, usage: KeyUsage) -> RateHeaders | None:
    """The key's request budget as it stands, spending nothing (GET /v1/models, held streams,
    concurrency refusals): its per-minute rate if it has one, else its daily cap, else None."""
    if key.rate_per_min is not None and key.rate_per_min > 0:
        interval = 60.0 / key.rate_per_min
        burst = burst_of(key.rate_per_min)
        tau = (burst - 1) * interval
        base = now if usage.tat is None else max(usage.tat, now)
        remaining = max(0, min(burst, math.floor((now + tau - base) / interval + 1 + 1e-9)))
        return RateHeaders(burst, remaining, base - now)
    if key.daily_cap is not None:
        return RateHeaders(key.daily_cap, max(0, key.daily_cap - usage.day_count), seconds_to_day_end(now))
    return None


def pick_replica(replicas: Sequence[ReplicaSlot]) -> ReplicaSlot | None:
    """The ready replica with the most headroom under its cap; ties go to the earlier one."""
    best: ReplicaSlot | None = None
    for r in replicas:
        if r.headroom > 0 and (best is None or r.headroom > best.headroom):
            best = r
    return best


def budget_of(replicas: Sequence[ReplicaSlot], plan_max: int) -> int:
    return min(sum(max(r.cap, 0) for r in replicas), plan_max)


def decide(
    now: float,
    key: KeyLimits,
    usage: KeyUsage,
    replicas: Sequence[ReplicaSlot],
    total_in_flight: int,
    plan_max: int,
    endpoint: str | None = None,
) -> Decision:
    """Admit or reject one request. `replicas` are the ready ones with their live lease counts."""
    budget = budget_of(replicas, plan_max)
    conc = RateHeaders(budget, max(0, budget - total_in_flight), 0.0)

    if endpoint is not None and key.endpoint is not None and key.endpoint != endpoint:
        return Rejected("scope", conc, None, total_in_flight)
    if key.expires_at is not None and now >= key.expires_at:
        return Rejected("expired", conc, None, total_in_flight)

    day_count = usage.day_count
    if key.daily_cap is not None and day_count >= key.daily_cap:
        hdr = RateHeaders(key.daily_cap, 0, seconds_to_day_end(now))
        return Rejected("daily_cap", hdr, None, total_in_flight)

    rate: Gcra | None = None
    if key.rate_per_min is not None:
        rate = gcra(usage.tat, now, key.rate_per_min)
        if not rate.allowed:
            return Rejected("rate", rate.headers, min(rate.retry_after_s, MAX_RETRY_AFTER_S), total_in_flight)

    if not replicas:
        return Rejected("no_replicas", conc, None, total_in_flight)
    if total_in_flight >= budget:
        # Over the plan's cap is final (429); short of replicas may resolve by scaling (caller holds).
        reason: RejectReason = "budget" if budget >= plan_max else "capacity"
        return Rejected(reason, conc, None, total_in_flight)
    chosen = pick_replica(replicas)
    if chosen is None:  # every replica full although the sum is under budget: stale counts
        return Rejected("capacity", conc, None, total_in_flight)

    if rate is not None:
        headers = rate.headers
    elif key.daily_cap is not None:
        headers = RateHeaders(key.daily_cap, key.daily_cap - day_count - 1, seconds_to_day_end(now))
    else:
        headers = RateHeaders(budget, budget - total_in_flight - 1, 0.0)
    return Admitted(
        replica_id=chosen.id,
        headers=headers,
        in_flight=total_in_flight + 1,
        new_tat=rate.new_tat if rate is not None else usage.tat,
        new_day_count=day_count + 1,
    )


def busy_retry_after(mean_duration_s: float, in_flight: int) -> float:
    """Retry-After for a full concurrency budget: when the first of `in_flight` requests should end.

    With requests of mean duration D in flight, one finishes on average every D / n seconds.
    """
    est = mean_duration_s / max(in_flight, 1)
    return min(max(est, 0.05), MAX_RETRY_AFTER_S)
