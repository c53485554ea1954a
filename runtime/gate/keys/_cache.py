"""CachedKeyStore: a small TTL cache in front of a KeyStore, so the gate does not read DynamoDB
(or sqlite) on every request.

The bound, which docs/gate.md states: a change to a key (revoke, rotation's shortened expiry) made
at time T is seen by every gate process no later than T + ``ttl_s``. An entry's age is counted
from *before* its store read began, and stores read consistently, so no entry can carry a value
older than ``ttl_s``. Expiry needs no cache bound: ``expires_at`` travels in the record and the
gate checks ``record.state(now)`` on every request.

Unknown hashes are cached too, for ``negative_ttl_s`` (default min(ttl, 1 s)): a flood of random
keys costs one store read per distinct key per second, not one per request, while a key minted
after someone tried it works within that second. Positive and negative entries live in separate
bounded LRUs so a spray of garbage keys cannot evict the real ones. Store errors are not cached
and no stale entry is served on error: an outage must not extend a revoked key's life.

Concurrent misses for the same hash share one store read (single flight). Locks are
``threading`` locks, which gunicorn's gevent worker patches into greenlet-aware ones.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from runtime.gate.keys._record import KeyRecord
from runtime.gate.keys._store import DEFAULT_GRACE_S, KEEP_LIFETIME, Clock, Expiry, KeyStore
from warmstart.errors import ConfigError


class CachedKeyStore:
    def __init__(
        self,
        store: KeyStore,
        ttl_s: float,
        *,
        negative_ttl_s: float | None = None,
        max_entries: int = 10_000,
        max_negative: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if not 0 <= ttl_s <= 3600:
            raise ConfigError(f"key cache ttl_s={ttl_s!r} must be between 0 and 3600 seconds")
        if negative_ttl_s is None:
            negative_ttl_s = min(ttl_s, 1.0)
        if not 0 <= negative_ttl_s <= ttl_s:
            raise ConfigError(f"negative_ttl_s={negative_ttl_s!r} must be between 0 and ttl_s={ttl_s!r}")
        if max_entries < 1 or max_negative < 1:
            raise ConfigError("max_entries and max_negative must be at least 1")
        self.store = store
        self.ttl_s = float(ttl_s)
        self.negative_ttl_s = float(negative_ttl_s)
        self._max = max_entries
        self._max_negative = max_negative
        self._clock = clock
        self._lock = threading.Lock()
        self._positive: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedKeyStore({self.store!r}, ttl_s={self.ttl_s})"

    # -- the cached read ----------------------------------------------------------------------

    def get(self, key_hash: str) -> KeyRecord | None:
        if self.ttl_s <= 0:
            return self.store.get(key_hash)
        found, record = self._lookup(key_hash)
        if found:
            return record
        with self._lock:
            flight = self._loading.setdefault(key_hash, threading.Lock())
        try:
            with flight:
                found, record = self._lookup(key_hash)  # filled while we waited for the flight?
                if found:
                    return record
                started = self._clock()
                self.misses += 1
                record = self.store.get(key_hash)
                self._store_result(key_hash, record, started)
                return record
        finally:
            with self._lock:
                if self._loading.get(key_hash) is flight and not flight.locked():
                    del self._loading[key_hash]

    def _lookup(self, key_hash: str) -> tuple[bool, KeyRecord | None]:
        now = self._clock()
        with self._lock:
            entry = self._positive.get(key_hash)
            if entry is not None:
                if now < entry[0]:
                    self._positive.move_to_end(key_hash)
                    self.hits += 1
                    return True, entry[1]
                del self._positive[key_hash]
            until = self._negative.get(key_hash)
            if until is not None:
                if now < until:
                    self.hits += 1
                    return True, None
                del self._negative[key_hash]
        return False, None

    def _store_result(self, key_hash: str, record: KeyRecord | None, started: float) -> None:
        with self._lock:
            if record is not None:
                self._negative.pop(key_hash, None)
                self._positive[key_hash] = (started + self.ttl_s, record)
                self._positive.move_to_end(key_hash)
                while len(self._positive) > self._max:
                    self._positive.popitem(last=False)
            elif self.negative_ttl_s > 0:
                self._positive.pop(key_hash, None)
                self._negative[key_hash] = started + self.negative_ttl_s
                self._negative.move_to_end(key_hash)
                while len(self._negative) > self._max_negative:
                    self._negative.popitem(last=False)

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget one hash (or everything). Other processes still rely on the TTL bound."""
        with self._lock:
            if key_hash is None:
                self._positive.clear()
                self._negative.clear()
            else:
                self._positive.pop(key_hash, None)
                self._negative.pop(key_hash, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._positive) + len(self._negative)

    # -- writes go straight through (and drop what this process cached) -----------------------

    def create(
        self,
        *,
        endpoint: str,
        kind: str = "api",
        plan: str = "pro",
        expires_at: float | None = None,
        rate_per_min: float | None = None,
        daily_cap: int | None = None,
        name: str | None = None,
        rotated_from: str | None = None,
    ) -> tuple[str, KeyRecord]:
        key, record = self.store.create(
            endpoint=endpoint, kind=kind, plan=plan, expires_at=expires_at, rate_per_min=rate_per_min,
            daily_cap=daily_cap, name=name, rotated_from=rotated_from,
        )
        self.invalidate(record.key_hash)
        return key, record

    def list(self, endpoint: str | None = None) -> list[KeyRecord]:
        return self.store.list(endpoint)

    def revoke(self, ident: str) -> KeyRecord:
        record = self.store.revoke(ident)
        self.invalidate(record.key_hash)
        return record

    def rotate(
        self, ident: str, grace_s: float = DEFAULT_GRACE_S, *, expires_at: Expiry = KEEP_LIFETIME
    ) -> tuple[str, KeyRecord]:
        key, record = self.store.rotate(ident, grace_s, expires_at=expires_at)
        if record.rotated_from:
            self.invalidate(record.rotated_from)
        self.invalidate(record.key_hash)
        return key, record

    def close(self) -> None:
        self.store.close()
