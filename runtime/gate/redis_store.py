"""The Redis admission store: one Lua call per admission (admit.lua), one per release/renewal.

Keys share the hash tag `{ws:<endpoint>}` so the scripts stay single-slot on a Redis Cluster /
ElastiCache cluster-mode. Leases are a sorted set scored by expiry (ms, from Redis TIME): a gate
that dies stops renewing, and the next admission on any gate purges its leases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any

import redis

from runtime.gate.admission import Admitted, Decision, KeyLimits, KeyUsage, RateHeaders, Rejected, day_index
from runtime.gate.store import AdmissionStore, SlotSpec


def _script(name: str) -> str:
    return files("runtime.gate").joinpath(name).read_text()


def _num(v: float | int | None) -> str:
    return "" if v is None else repr(float(v))


class RedisStore(AdmissionStore):
    kind = "redis"

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        super().__init__()
        self._r = client
        tag = f"{{ws:{namespace}}}"
        self._tag = tag
        self._namespace = namespace
        self._lease_keys = [f"{tag}:leases", f"{tag}:owner", f"{tag}:replicas"]
        self._admit = client.register_script(_script("admit.lua"))
        self._leases = client.register_script(_script("leases.lua"))

    @classmethod
    def from_url(cls, url: str, namespace: str) -> RedisStore:
        # Bounded timeouts: a stalled Redis must fail a request (503), not hang a worker's greenlets.
        client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30,
            max_connections=2048, decode_responses=True,
        )
        return cls(client, namespace)

    def admit(
        self, key: KeyLimits, replicas: Sequence[SlotSpec], plan_max: int, lease_id: str, ttl_s: float
    ) -> Decision:
        keys = [*self._lease_keys, f"{self._tag}:tat:{key.key_hash}", f"{self._tag}:day:{key.key_hash}"]
        args: list[Any] = [
            lease_id, int(ttl_s * 1000), plan_max,
            "" if key.rate_per_min is None else repr(float(key.rate_per_min)),
            "" if key.daily_cap is None else str(int(key.daily_cap)),
            "" if key.expires_at is None else repr(key.expires_at * 1000),
            key.endpoint or "", self._namespace,
            len(replicas),
        ]
        for r in replicas:
            args += [r.id, r.cap]
        res = self._admit(keys=keys, args=args)
        ok, reason, rid, limit, remaining, reset_ms, retry_ms, in_flight, expired = res
        self._expired(int(expired))
        headers = RateHeaders(int(float(limit)), int(float(remaining)), float(reset_ms) / 1000)
        if ok == "1":
            return Admitted(rid, headers, int(in_flight), None, 0)
        retry = float(retry_ms)
        return Rejected(reason, headers, None if retry < 0 else retry / 1000, int(in_flight))

    def usage(self, key: KeyLimits) -> tuple[float, KeyUsage]:
        sec, usec = self._r.time()
        now = sec + usec / 1e6
        tat_ms, day = self._r.mget(f"{self._tag}:tat:{key.key_hash}",
                                   f"{self._tag}:day:{key.key_hash}:{day_index(now)}")
        tat = float(tat_ms) / 1000 if tat_ms else None
        return now, KeyUsage(tat=tat if tat is not None and tat > now else None, day_count=int(day or 0))

    def release(self, lease_id: str) -> bool:
        return int(self._leases(keys=self._lease_keys, args=["release", lease_id])) == 1

    def renew(self, lease_ids: Iterable[str], ttl_s: float) -> set[str]:
        ids = list(lease_ids)
        res = self._leases(keys=self._lease_keys, args=["renew", int(ttl_s * 1000), *ids])
        self._expired(int(res[0]))
        return set(res[1:])

    def in_flight(self) -> dict[str, int]:
        res = self._leases(keys=self._lease_keys, args=["stats"])
        self._expired(int(res[0]))
        return {res[i]: int(res[i + 1]) for i in range(1, len(res), 2)}

    def claim(self, name: str, ttl_s: float) -> bool:
        return bool(self._r.set(f"{self._tag}:claim:{name}", "1", nx=True, px=max(1, int(ttl_s * 1000))))

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._r.close()
