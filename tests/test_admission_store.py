"""The admission store contract: the memory store and the Redis Lua store pass the same tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from runtime.gate.admission import Admitted, KeyLimits, RateHeaders, Rejected, key_headers
from runtime.gate.store import AdmissionStore, MemoryStore, SlotSpec, open_store


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[AdmissionStore]:
    if request.param == "memory":
        s: AdmissionStore = MemoryStore(namespace="ep-test")
    else:
        s = open_store(request.getfixturevalue("redis_url"), "ep-test")
    yield s
    s.close()


def lid() -> str:
    return uuid.uuid4().hex


KEY = KeyLimits("k" * 64)
TWO = [SlotSpec("r1", 3), SlotSpec("r2", 3)]


def test_admits_exactly_the_budget_spread_over_the_least_loaded(store: AdmissionStore) -> None:
    got = [store.admit(KEY, TWO, 240, lid(), 30) for _ in range(7)]
    admitted = [d for d in got if isinstance(d, Admitted)]
    assert len(admitted) == 6
    assert [d.replica_id for d in admitted] == ["r1", "r2", "r1", "r2", "r1", "r2"]
    assert [d.headers.remaining for d in admitted] == [5, 4, 3, 2, 1, 0]
    last = got[-1]
    assert isinstance(last, Rejected) and last.reason == "capacity" and last.status == 429
    assert store.in_flight() == {"r1": 3, "r2": 3}


def test_plan_cap_bounds_the_budget(store: AdmissionStore) -> None:
    for _ in range(4):
        assert store.admit(KEY, TWO, 4, lid(), 30).admitted
    over = store.admit(KEY, TWO, 4, lid(), 30)
    assert isinstance(over, Rejected) and over.reason == "budget" and over.headers.limit == 4


def test_no_ready_replicas(store: AdmissionStore) -> None:
    d = store.admit(KEY, [], 240, lid(), 30)
    assert isinstance(d, Rejected) and d.reason == "no_replicas"


def test_release_is_exactly_once_and_frees_the_slot(store: AdmissionStore) -> None:
    one = [SlotSpec("r1", 1)]
    a = lid()
    assert store.admit(KEY, one, 240, a, 30).admitted
    assert not store.admit(KEY, one, 240, lid(), 30).admitted
    assert store.release(a) is True
    assert store.release(a) is False
    assert store.total_in_flight() == 0
    assert store.admit(KEY, one, 240, lid(), 30).admitted
    assert store.in_flight() == {"r1": 1}


def test_daily_cap_and_rejections_consume_no_quota(store: AdmissionStore) -> None:
    key = KeyLimits("d" * 64, daily_cap=2)
    one = [SlotSpec("r1", 1)]
    first = lid()
    d = store.admit(key, one, 240, first, 30)
    assert isinstance(d, Admitted) and d.headers.limit == 2 and d.headers.remaining == 1
    for _ in range(5):  # over the concurrency budget: refused, and must not count toward the day
        r = store.admit(key, one, 240, lid(), 30)
        assert isinstance(r, Rejected) and r.reason == "capacity"
    store.release(first)
    second = store.admit(key, one, 240, lid(), 30)
    assert isinstance(second, Admitted) and second.headers.remaining == 0
    capped = store.admit(key, [SlotSpec("r1", 5)], 240, lid(), 30)
    assert isinstance(capped, Rejected) and capped.reason == "daily_cap"
    assert capped.status == 429 and not capped.should_retry
    assert 0 < capped.headers.reset_s <= 86400
    assert store.admit(KeyLimits("e" * 64, daily_cap=2), [SlotSpec("r1", 5)], 240, lid(), 30).admitted


def test_rate_gcra_with_exact_retry_after(store: AdmissionStore) -> None:
    key = KeyLimits("r" * 64, rate_per_min=2)  # burst 2, then one every 30 s
    wide = [SlotSpec("r1", 100)]
    t0 = time.time()
    assert store.admit(key, wide, 240, lid(), 30).admitted
    assert store.admit(key, wide, 240, lid(), 30).admitted
    r = store.admit(key, wide, 240, lid(), 30)
    elapsed = time.time() - t0
    assert isinstance(r, Rejected) and r.reason == "rate" and r.status == 429
    assert r.retry_after_s is not None and 30 - elapsed - 0.01 <= r.retry_after_s <= 30
    assert r.headers.remaining == 0
    # the refusal consumed nothing: the Retry-After did not grow
    again = store.admit(key, wide, 240, lid(), 30)
    assert isinstance(again, Rejected) and again.retry_after_s is not None
    assert again.retry_after_s <= r.retry_after_s
    assert store.total_in_flight() == 2


def test_expired_key_is_refused_by_store_time(store: AdmissionStore) -> None:
    d = store.admit(KeyLimits("x" * 64, expires_at=time.time() - 1), TWO, 240, lid(), 30)
    assert isinstance(d, Rejected) and d.status == 403 and d.reason == "expired"
    assert store.total_in_flight() == 0


def test_unrenewed_leases_expire_and_are_counted_as_leaks(store: AdmissionStore) -> None:
    leaks: list[int] = []
    store.on_expired = leaks.append
    kept, lost = lid(), lid()
    assert store.admit(KEY, TWO, 240, kept, 1.0).admitted
    assert store.admit(KEY, TWO, 240, lost, 1.0).admitted
    for _ in range(4):
        time.sleep(0.4)
        assert kept in store.renew([kept], 1.0)
    assert store.in_flight() == {"r1": 1} or store.in_flight() == {"r2": 1}
    assert sum(leaks) == 1
    assert store.renew([lost], 1.0) == set()
    assert store.release(lost) is False
    assert store.release(kept) is True
    assert store.total_in_flight() == 0


def test_claim_is_won_once_per_window(store: AdmissionStore) -> None:
    assert store.claim("wake", 0.5) is True
    assert store.claim("wake", 0.5) is False
    time.sleep(0.6)
    assert store.claim("wake", 0.5) is True


def test_concurrent_admissions_never_exceed_the_budget(store: AdmissionStore) -> None:
    slots = [SlotSpec(f"r{i}", 30) for i in range(8)]
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            ok = store.admit(KEY, slots, 240, lid(), 30).admitted
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 240 and len(results) == 400
    assert store.in_flight() == {f"r{i}": 30 for i in range(8)}


def test_a_key_for_another_endpoint_is_refused_and_spends_nothing(store: AdmissionStore) -> None:
    d = store.admit(KeyLimits("s" * 64, daily_cap=1, endpoint="elsewhere"), TWO, 240, lid(), 30)
    assert isinstance(d, Rejected) and d.reason == "scope" and d.status == 403 and not d.should_retry
    assert store.total_in_flight() == 0
    ok = store.admit(KeyLimits("s" * 64, daily_cap=1, endpoint="ep-test"), TWO, 240, lid(), 30)
    assert ok.admitted  # the refused attempt did not use the daily cap


def _peek(store: AdmissionStore, key: KeyLimits) -> RateHeaders | None:
    now, usage = store.usage(key)
    return key_headers(now, key, usage)


def test_usage_reads_the_key_budget_without_spending(store: AdmissionStore) -> None:
    rated = KeyLimits(uuid.uuid4().hex * 2, rate_per_min=3)
    capped = KeyLimits(uuid.uuid4().hex * 2, daily_cap=4)
    for key, limit in ((rated, 3), (capped, 4)):
        before = _peek(store, key)
        assert before is not None and (before.limit, before.remaining) == (limit, limit)
        d = store.admit(key, TWO, 240, lid(), 30)
        assert isinstance(d, Admitted)
        after = _peek(store, key)
        assert after is not None and (after.limit, after.remaining) == (limit, limit - 1)
        assert after.remaining == d.headers.remaining  # the same numbers the admission reported
    assert _peek(store, KEY) is None  # no rate, no cap: the gate shows concurrency


def test_memory_store_scans_its_leases_only_when_one_may_have_expired() -> None:
    now = [1000.0]
    s = MemoryStore(clock=lambda: now[0], namespace="ep-test")
    leaks: list[int] = []
    s.on_expired = leaks.append
    wide = [SlotSpec("r1", 1000)]
    for i in range(300):
        now[0] += 0.01
        assert s.admit(KeyLimits(f"{i:064x}"), wide, 1000, f"l{i}", 30).admitted
    assert s.scans <= 1  # not one scan of every lease per admission
    now[0] = 1020.0
    s.renew([f"l{i}" for i in range(150)], 30)  # half stay alive (to 1050), the rest end by 1033
    now[0] = 1040.0
    assert s.admit(KeyLimits("f" * 64), wide, 1000, "late", 30).admitted
    assert leaks == [150] and s.total_in_flight() == 151
