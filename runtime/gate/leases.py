"""Leases held by this gate process, and the keeper that renews them while requests run.

One keeper thread per process (a greenlet under gunicorn's gevent worker) renews every live lease
of the process in a single store call each `ttl / 3`, so a stream of any length keeps its slot and
a process that dies stops renewing: its leases expire within `lease_ttl_s` and are purged.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from runtime.gate import metrics

if TYPE_CHECKING:
    from runtime.gate.store import AdmissionStore

log = logging.getLogger("warmstart.gate.leases")


class Lease:
    """One admitted request's slot on one replica; `release()` is safe to call any number of times."""

    __slots__ = ("id", "replica_id", "_keeper", "_released")

    def __init__(self, lease_id: str, replica_id: str, keeper: LeaseKeeper) -> None:
        self.id = lease_id
        self.replica_id = replica_id
        self._keeper = keeper
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._keeper.drop(self)


class LeaseKeeper:
    def __init__(self, store: AdmissionStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._live: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, lease_id: str, replica_id: str) -> Lease:
        lease = Lease(lease_id, replica_id, self)
        with self._lock:
            self._live[lease_id] = lease
        self.start()
        metrics.IN_FLIGHT.inc()
        return lease

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ws-lease-keeper", daemon=True)
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._live.pop(lease.id, None)
        metrics.IN_FLIGHT.dec()
        try:
            self.store.release(lease.id)
        except Exception:  # the store is down: the lease expires on its own within ttl
            log.exception("lease release failed; it will expire within %.0f s", self.ttl_s)

    def live(self) -> int:
        with self._lock:
            return len(self._live)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.ttl_s / 3)
            with self._lock:
                ids = list(self._live)
            if not ids:
                # Nothing to renew, but still sweep: expired leases of a dead gate are purged (and
                # counted in ws_lease_leaks_total) even when no request arrives to do it.
                try:
                    self.store.in_flight()
                except Exception:
                    log.exception("lease sweep failed")
                continue
            try:
                alive = self.store.renew(ids, self.ttl_s)
            except Exception:
                log.exception("lease renewal failed; retrying")
                continue
            lost = [i for i in ids if i not in alive]
            if lost:
                # Renewal came too late (a stalled worker, a store failover): the slot was reclaimed.
                # The request keeps running; the budget is briefly over-admitted by len(lost).
                log.warning("%d leases expired before renewal", len(lost))

    def close(self) -> None:
        self._closed = True
        self._wake.set()
