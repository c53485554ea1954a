"""CachedKeyStore over a real sqlite store, with an injected clock (no sleeps).

The store is wrapped only to count reads (and, where a test says so, to fail or move the clock
during one); every answer still comes from the real store.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from runtime.gate.keys import CachedKeyStore, KeyRecord, KeyStore, generate_key, hash_key, open_key_store
from warmstart.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class CountingStore:
    """Delegates to a real store and counts get() calls."""

    def __init__(self, store: KeyStore) -> None:
        self.inner = store
        self.reads = 0
        self.fail_next = False
        self.during_read: list[object] = []  # callables run inside the next read
        self.gate: threading.Event | None = None

    def get(self, key_hash: str) -> KeyRecord | None:
        self.reads += 1
        if self.gate is not None:
            self.gate.wait(30)
        while self.during_read:
            action = self.during_read.pop()
            assert callable(action)
            action()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("store unavailable")
        return self.inner.get(key_hash)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture()
def parts(tmp_path: Path) -> tuple[KeyStore, CountingStore, Clock]:
    store = open_key_store(f"sqlite:{tmp_path / 'keys.db'}")
    return store, CountingStore(store), Clock()


def test_hits_within_ttl_and_rereads_after(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    key, record = store.create(endpoint="demo")
    for _ in range(100):
        assert cache.get(record.key_hash) == record
    assert counting.reads == 1
    clock.t += 4.999
    assert cache.get(record.key_hash) == record and counting.reads == 1
    clock.t += 0.001
    assert cache.get(record.key_hash) == record and counting.reads == 2
    assert (cache.hits, cache.misses) == (100, 2)


def test_revocation_elsewhere_is_seen_within_ttl(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    """Another process revokes the key: this cache serves the old record until, at the latest, ttl."""
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    key, record = store.create(endpoint="demo")
    assert cache.get(record.key_hash) is not None
    store.revoke(key)
    clock.t += 4.9
    cached = cache.get(record.key_hash)
    assert cached is not None and cached.revoked_at is None  # within the documented bound
    clock.t += 0.1
    fresh = cache.get(record.key_hash)
    assert fresh is not None and fresh.state(0) == "revoked"


def test_age_counts_from_before_the_read(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    """A slow store read must not stretch the bound: the entry expires ttl after the read began."""
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    _, record = store.create(endpoint="demo")

    def slow() -> None:
        clock.t += 3

    counting.during_read.append(slow)
    cache.get(record.key_hash)  # read began at 1000, finished at 1003
    clock.t = 1004.999
    cache.get(record.key_hash)
    assert counting.reads == 1
    clock.t = 1005
    cache.get(record.key_hash)
    assert counting.reads == 2


def test_unknown_keys_are_cached_briefly(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    assert cache.negative_ttl_s == 1.0
    key = generate_key()
    for _ in range(50):
        assert cache.get(hash_key(key)) is None
    assert counting.reads == 1
    # The key is minted after someone tried it: usable once the negative entry lapses.
    _, record = store.create(endpoint="demo")
    assert cache.get(record.key_hash) == record
    assert cache.get(record.key_hash) == record and counting.reads == 2
    clock.t += 1
    assert cache.get(hash_key(key)) is None and counting.reads == 3


def test_size_is_bounded_and_garbage_cannot_evict_real_keys(
    parts: tuple[KeyStore, CountingStore, Clock],
) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=60, max_entries=3, max_negative=5, clock=clock)  # type: ignore[arg-type]
    records = [store.create(endpoint="demo")[1] for _ in range(3)]
    for r in records:
        cache.get(r.key_hash)
    for _ in range(1000):
        cache.get(hash_key(generate_key()))
    assert len(cache) == 3 + 5
    reads = counting.reads
    for r in records:
        assert cache.get(r.key_hash) == r
    assert counting.reads == reads  # all three still cached
    extra = store.create(endpoint="demo")[1]
    cache.get(extra.key_hash)  # evicts the least recently used real entry
    assert len(cache) == 3 + 5
    cache.get(records[0].key_hash)
    assert counting.reads == reads + 2


def test_ttl_zero_passes_through(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=0, clock=clock)  # type: ignore[arg-type]
    _, record = store.create(endpoint="demo")
    for _ in range(3):
        cache.get(record.key_hash)
    assert counting.reads == 3 and len(cache) == 0


def test_writes_through_the_cache_take_effect_at_once_here(
    parts: tuple[KeyStore, CountingStore, Clock],
) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=60, clock=clock)  # type: ignore[arg-type]
    key, record = cache.create(endpoint="demo")
    assert cache.get(record.key_hash) == record
    new_key, new = cache.rotate(key, grace_s=10)
    old = cache.get(record.key_hash)
    assert old is not None and old.expires_at is not None  # the shortened expiry, not the cached one
    assert cache.revoke(new.display).revoked_at is not None
    got = cache.get(new.key_hash)
    assert got is not None and got.state(0) == "revoked"
    assert [r.key_hash for r in cache.list("demo")] == [record.key_hash, new.key_hash]


def test_errors_are_not_cached_and_no_stale_entry_is_served(
    parts: tuple[KeyStore, CountingStore, Clock],
) -> None:
    store, counting, clock = parts
    cache = CachedKeyStore(counting, ttl_s=5, clock=clock)  # type: ignore[arg-type]
    key, record = store.create(endpoint="demo")
    cache.get(record.key_hash)
    clock.t += 5
    counting.fail_next = True
    with pytest.raises(ConnectionError):
        cache.get(record.key_hash)
    assert cache.get(record.key_hash) == record and counting.reads == 3


def test_concurrent_misses_share_one_read(parts: tuple[KeyStore, CountingStore, Clock]) -> None:
    store, counting, _ = parts
    calls = []
    clock_lock = threading.Lock()

    def counting_clock() -> float:
        with clock_lock:
            calls.append(1)
        return 1000.0

    cache = CachedKeyStore(counting, ttl_s=5, clock=counting_clock)  # type: ignore[arg-type]
    _, record = store.create(endpoint="demo")
    counting.gate = threading.Event()
    results: list[KeyRecord | None] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(record.key_hash))) for _ in range(16)]
    for t in threads:
        t.start()
    # Every thread has missed once (16 clock reads) and the first read has begun (one more): all
    # sixteen are now past the cache check and inside the miss path while the read is held open.
    pause = threading.Event()
    for _ in range(3000):  # bounded wait (~30 s); with single flight the result is 1 read either way
        if len(calls) >= 17:
            break
        pause.wait(0.01)
    counting.gate.set()
    for t in threads:
        t.join(30)
    assert results == [record] * 16
    assert counting.reads == 1


@pytest.mark.parametrize("kwargs", [{"ttl_s": -1}, {"ttl_s": 7200}, {"ttl_s": 5, "negative_ttl_s": 6},
                                    {"ttl_s": 5, "max_entries": 0}])
def test_bad_cache_settings(parts: tuple[KeyStore, CountingStore, Clock], kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        CachedKeyStore(parts[0], **kwargs)  # type: ignore[arg-type]


GEVENT_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import sys

import gevent

from runtime.gate.keys import CachedKeyStore, generate_key, hash_key, open_key_store

store = open_key_store(sys.argv[1])
reads = []


class Counting:
    def get(self, key_hash):
        reads.append(key_hash)
        return store.get(key_hash)  # real DynamoDB I/O: the greenlet yields while it waits


cache = CachedKeyStore(Counting(), ttl_s=30)
_, record = store.create(endpoint="demo")
unknown = [hash_key(generate_key()) for _ in range(20)]
jobs = [gevent.spawn(cache.get, record.key_hash) for _ in range(200)]
jobs += [gevent.spawn(cache.get, h) for h in unknown for _ in range(5)]
gevent.joinall(jobs, timeout=60, raise_error=True)
assert all(j.ready() for j in jobs), "greenlets stuck"
assert [j.value for j in jobs[:200]] == [record] * 200
assert all(j.value is None for j in jobs[200:])
print(reads.count(record.key_hash), len(reads))
"""


def test_greenlets_share_reads_without_deadlock(aws_env: str, tmp_path: Path) -> None:
    """Under gevent's monkey-patching (as in the gate's workers) many greenlets miss at once
    while the store read yields on a real socket: one read per hash, nobody stuck."""
    import subprocess
    import sys

    from tests.support.keys import create_keys_table

    create_keys_table("ws-test-gevent-keys")
    script = tmp_path / "greenlets.py"
    script.write_text(GEVENT_SCRIPT)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script), "dynamodb:ws-test-gevent-keys"],
        capture_output=True, text=True, timeout=120, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shared, total = map(int, done.stdout.split())
    assert (shared, total) == (1, 21)
