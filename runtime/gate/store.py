"""Admission stores: where leases, GCRA state and daily counts live.

    AdmissionStore      the interface the app uses
    ├── MemoryStore     one gate process (the local default): `decide` under a lock
    └── RedisStore      any number of gate processes and machines: one Lua call per admission
                        (runtime/gate/redis_store.py, script in admit.lua)

Both take time from the store side (Redis TIME; the memory store's own clock), so gates with
skewed clocks agree on expiry, GCRA and the UTC day.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from runtime.gate.admission import (
    Admitted,
    Decision,
    KeyLimits,
    KeyUsage,
    ReplicaSlot,
    day_index,
    decide,
)


@dataclass(frozen=True)
class SlotSpec:
    """A ready replica offered to admission: id and cap (the store knows its lease count)."""

    id: str
    cap: int


class AdmissionStore(abc.ABC):
    """Leases and quota state for one endpoint."""

    kind: str = "abstract"

    def __init__(self) -> None:
        # Called with the number of leases that expired unreleased (a gate died, or a bug): the
        # app counts them in ws_lease_leaks_total.
        self.on_expired: Callable[[int], None] | None = None

    def _expired(self, n: int) -> None:
        if n and self.on_expired is not None:
            self.on_expired(n)

    @abc.abstractmethod
    def admit(
        self, key: KeyLimits, replicas: Sequence[SlotSpec], plan_max: int, lease_id: str, ttl_s: float
    ) -> Decision:
        """Decide and, if admitted, commit: a lease, the GCRA state, the daily count."""

    @abc.abstractmethod
    def usage(self, key: KeyLimits) -> tuple[float, KeyUsage]:
        """Store time and the key's GCRA / daily state, read without spending anything."""

    @abc.abstractmethod
    def release(self, lease_id: str) -> bool:
        """Drop a lease. True the first time, False after (exactly-once accounting)."""

    @abc.abstractmethod
    def renew(self, lease_ids: Iterable[str], ttl_s: float) -> set[str]:
        """Push the expiry of live leases ttl_s ahead; returns the ids that were still live."""

    @abc.abstractmethod
    def in_flight(self) -> dict[str, int]:
        """Live leases per replica id (expired ones purged first)."""

    def total_in_flight(self) -> int:
        return sum(self.in_flight().values())

    @abc.abstractmethod
    def claim(self, name: str, ttl_s: float) -> bool:
        """True for exactly one caller per `name` within ttl_s (e.g. who calls pool.wake())."""

    def ping(self) -> bool:
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryStore(AdmissionStore):
    """Everything in this process. Correct only with one gate process (gunicorn -w 1)."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time, namespace: str | None = None) -> None:
        super().__init__()
        self._namespace = namespace
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}  # lease_id -> (replica_id, expires_at)
        self._per_replica: dict[str, int] = {}
        self._tat: dict[str, float] = {}
        self._days: dict[tuple[str, int], int] = {}
        self._claims: dict[str, float] = {}
        # A lower bound on the soonest lease expiry (renewals only push expiries later): the scan
        # of every lease runs only once something may have expired, not on every admission.
        self._next_expiry = float("inf")
        self.scans = 0  # full lease scans so far (should stay far below the admission count)

    def _purge(self, now: float) -> None:
        if now < self._next_expiry:
            return
        self.scans += 1
        dead = [lid for lid, (_, exp) in self._leases.items() if exp <= now]
        for lid in dead:
            rid, _ = self._leases.pop(lid)
            self._per_replica[rid] -= 1
        self._next_expiry = min((exp for _, exp in self._leases.values()), default=float("inf"))
        self._expired(len(dead))

    def admit(
        self, key: KeyLimits, replicas: Sequence[SlotSpec], plan_max: int, lease_id: str, ttl_s: float
    ) -> Decision:
        with self._lock:
            now = self._clock()
            self._purge(now)
            day = day_index(now)
            tat = self._tat.get(key.key_hash)
            usage = KeyUsage(tat=tat if tat is not None and tat > now else None,
                             day_count=self._days.get((key.key_hash, day), 0))
            slots = [ReplicaSlot(r.id, r.cap, self._per_replica.get(r.id, 0)) for r in replicas]
            decision = decide(now, key, usage, slots, len(self._leases), plan_max, self._namespace)
            if isinstance(decision, Admitted):
                self._leases[lease_id] = (decision.replica_id, now + ttl_s)
                self._next_expiry = min(self._next_expiry, now + ttl_s)
                self._per_replica[decision.replica_id] = self._per_replica.get(decision.replica_id, 0) + 1
                if decision.new_tat is not None and key.rate_per_min is not None:
                    self._tat[key.key_hash] = decision.new_tat
                if key.daily_cap is not None:
                    # Yesterday's counters are dead weight in a long-lived process.
                    for k in [k for k in self._days if k[1] < day]:
                        del self._days[k]
                    self._days[(key.key_hash, day)] = decision.new_day_count
            return decision

    def usage(self, key: KeyLimits) -> tuple[float, KeyUsage]:
        with self._lock:
            now = self._clock()
            tat = self._tat.get(key.key_hash)
            return now, KeyUsage(tat=tat if tat is not None and tat > now else None,
                                 day_count=self._days.get((key.key_hash, day_index(now)), 0))

    def release(self, lease_id: str) -> bool:
        with self._lock:
            entry = self._leases.pop(lease_id, None)
            if entry is None:
                return False
            self._per_replica[entry[0]] -= 1
            return True

    def renew(self, lease_ids: Iterable[str], ttl_s: float) -> set[str]:
        with self._lock:
            now = self._clock()
            self._purge(now)
            alive = set()
            for lid in lease_ids:
                entry = self._leases.get(lid)
                if entry is not None:
                    self._leases[lid] = (entry[0], now + ttl_s)
                    alive.add(lid)
            if alive:
                self._next_expiry = min(self._next_expiry, now + ttl_s)
            return alive

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            self._purge(self._clock())
            return {rid: n for rid, n in self._per_replica.items() if n > 0}

    def claim(self, name: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            if self._claims.get(name, 0.0) > now:
                return False
            self._claims[name] = now + ttl_s
            return True


def open_store(url: str, namespace: str) -> AdmissionStore:
    """'memory' or a redis:// / rediss:// / unix:// URL."""
    if url == "memory":
        return MemoryStore(namespace=namespace)
    from runtime.gate.redis_store import RedisStore

    return RedisStore.from_url(url, namespace)
