"""What the gates of one endpoint agree on to scale it: recent demand and short locks.

Demand is kept as the peak endpoint-wide in-flight count per time bucket; the controller scales
in on the peak of the last idle_timeout seconds. Locks make "many gates, one scale-up": a gate
acts only while it holds the lock, and re-reads the group's desired capacity under it.

Two backends with one interface: `MemoryCoordinator` (one gate process: local and tests) and
`RedisCoordinator` (the gate tier: the same Redis/Valkey the admission store uses; redis-py's
`Lock` gives token-checked release, so a slow holder can never free another gate's lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

BUCKET_S = 5.0


def bucket_of(t: float) -> int:
    return int(t // BUCKET_S)


class Lease(Protocol):
    def release(self) -> None: ...


class Coordinator(Protocol):
    def record_demand(self, now: float, in_flight: int) -> None: ...

    def peak_since(self, since: float, now: float) -> int: ...

    def observing_since(self, now: float) -> float: ...

    def try_lock(self, name: str, ttl_s: float) -> Lease | None: ...


class _MemoryLease:
    def __init__(self, owner: MemoryCoordinator, name: str, token: object) -> None:
        self._owner, self._name, self._token = owner, name, token

    def release(self) -> None:
        self._owner._release(self._name, self._token)


class MemoryCoordinator:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._buckets: dict[int, int] = {}
        self._since: float | None = None
        self._locks: dict[str, tuple[object, float]] = {}

    def record_demand(self, now: float, in_flight: int) -> None:
        b = bucket_of(now)
        with self._mutex:
            if self._since is None:
                self._since = now
            if in_flight > self._buckets.get(b, -1):
                self._buckets[b] = in_flight
            for old in [k for k in self._buckets if k < b - 1000]:
                del self._buckets[old]

    def peak_since(self, since: float, now: float) -> int:
        lo, hi = bucket_of(since), bucket_of(now)
        with self._mutex:
            return max((v for k, v in self._buckets.items() if lo <= k <= hi), default=0)

    def observing_since(self, now: float) -> float:
        with self._mutex:
            if self._since is None:
                self._since = now
            return self._since

    def try_lock(self, name: str, ttl_s: float) -> Lease | None:
        now = self._clock()
        with self._mutex:
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return None
            token = object()
            self._locks[name] = (token, now + ttl_s)
            return _MemoryLease(self, name, token)

    def _release(self, name: str, token: object) -> None:
        with self._mutex:
            held = self._locks.get(name)
            if held is not None and held[0] is token:
                del self._locks[name]


# Keep the bucket's maximum: a gate reporting a lower count later in the bucket must not erase
# a peak another gate reported.
_MAX_SET = """
local v = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class _RedisLease:
    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def release(self) -> None:
        from redis.exceptions import LockError

        try:
            self._lock.release()
        except LockError:
            pass  # expired and maybe taken by another gate: nothing of ours to release


class RedisCoordinator:
    def __init__(self, url: str, endpoint: str, *, retain_s: float = 3600.0, client: Any = None) -> None:
        import redis

        self._r = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._prefix = f"ws:scale:{endpoint}:"
        self._retain_ms = int(retain_s * 1000)
        self._max_set = self._r.register_script(_MAX_SET)

    def record_demand(self, now: float, in_flight: int) -> None:
        self._r.setnx(self._prefix + "since", repr(now))
        self._max_set(keys=[f"{self._prefix}d:{bucket_of(now)}"], args=[int(in_flight), self._retain_ms])

    def peak_since(self, since: float, now: float) -> int:
        keys = [f"{self._prefix}d:{b}" for b in range(bucket_of(since), bucket_of(now) + 1)]
        values = self._r.mget(keys) if keys else []
        return max((int(v) for v in values if v is not None), default=0)

    def observing_since(self, now: float) -> float:
        self._r.setnx(self._prefix + "since", repr(now))
        raw = self._r.get(self._prefix + "since")
        return float(raw) if raw is not None else now

    def try_lock(self, name: str, ttl_s: float) -> Lease | None:
        lock = self._r.lock(self._prefix + "lock:" + name, timeout=ttl_s, blocking=False)
        return _RedisLease(lock) if lock.acquire() else None


def coordinator_for(store: str, endpoint: str) -> Coordinator:
    """The gate config's `store` decides: 'memory' (one gate) or redis:// (the gate tier)."""
    if store == "memory":
        return MemoryCoordinator()
    return RedisCoordinator(store, endpoint)
