"""The static pool: fixed vLLM URLs (tests, benchmarks, bring-your-own vLLM).

Every upstream is ready all the time; there is nothing to wake or scale. A replica's id is its
URL, so every gate process (and machine) names it the same way in the admission store.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool


class StaticPool(ReplicaPool):
    kind = "static"

    def __init__(self, upstreams: Sequence[str], cap: int) -> None:
        if not upstreams:
            raise ValueError("a static pool needs at least one upstream URL; pass --upstream http://HOST:PORT")
        if cap < 1:
            raise ValueError(f"cap={cap} must be >= 1")
        seen: dict[str, Replica] = {}
        for url in upstreams:
            base = url.rstrip("/").removesuffix("/v1")
            if not base.startswith(("http://", "https://")):
                raise ValueError(f"upstream={url!r} is not an http(s) URL; use http://HOST:PORT")
            seen.setdefault(base, Replica(id=base, url=base, cap=cap, state="ready"))
        self._snapshot = PoolSnapshot(ready=tuple(seen.values()))

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot

    def wake(self) -> None:
        """Nothing to wake: static replicas are always up."""

    def report_demand(self, in_flight: int) -> None:
        """A static pool cannot scale; demand only shows in the metrics."""
