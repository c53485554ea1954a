"""The KeyStore contract, run against both stores: sqlite (a real file) and DynamoDB (boto3
against moto's server over HTTP, table created with the stack's exact schema)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from runtime.gate.keys import (
    AmbiguousKey,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    KeyStoreUnavailable,
    generate_key,
    hash_key,
    is_well_formed,
    open_key_store,
)
from runtime.gate.keys._dynamodb import record_to_item
from tests.support.keys import create_keys_table, mint_key
from warmstart.errors import ConfigError, OperationError

T0 = 1_800_000_000.0
DAY = 86400.0
TABLE = "ws-test-demo-keys"


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Backend:
    name: str
    url: str
    clock: FakeClock
    store: KeyStore
    raw_dump: Callable[[], bytes]  # every byte at rest, as another reader would see it
    put_raw: Callable[[KeyRecord], None]  # write a record as another writer (the stack) would


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "state" / "keys.db"
    clock = FakeClock()
    store = open_key_store(f"sqlite:{path}", clock=clock)

    def raw_dump() -> bytes:
        return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith("keys.db"))

    def put_raw(record: KeyRecord) -> None:
        data = record.to_dict()
        with sqlite3.connect(path) as conn:
            conn.execute(
                f"INSERT INTO keys ({', '.join(data)}) VALUES ({', '.join('?' for _ in data)})",
                tuple(data.values()),
            )

    return Backend("sqlite", f"sqlite:{path}", clock, store, raw_dump, put_raw)


def _dynamodb_backend() -> Backend:
    client = boto3.client("dynamodb")
    create_keys_table(TABLE, client)
    clock = FakeClock()
    store = open_key_store(f"dynamodb:{TABLE}", clock=clock)

    def raw_dump() -> bytes:
        return repr(client.scan(TableName=TABLE)["Items"]).encode()

    def put_raw(record: KeyRecord) -> None:
        client.put_item(TableName=TABLE, Item=record_to_item(record))

    return Backend("dynamodb", f"dynamodb:{TABLE}", clock, store, raw_dump, put_raw)


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        request.getfixturevalue("aws_env")
        b = _dynamodb_backend()
    yield b
    b.store.close()


def _record_with_prefix(hex4: str, last4: str, endpoint: str = "demo") -> tuple[str, KeyRecord]:
    """A real key whose display form is chosen, to make prefix collisions without luck."""
    body = generate_key()[len("ws_live_") :]
    key = f"ws_live_{hex4}{body[4:60]}{last4}"
    assert is_well_formed(key)
    record = KeyRecord(
        key_hash=hash_key(key), endpoint=endpoint, kind="api", plan="pro", prefix=key[:12],
        last4=key[-4:], created_at=T0,
    )
    return key, record


# -- create / get ---------------------------------------------------------------------------------


def test_create_returns_the_key_once_and_stores_its_record(backend: Backend) -> None:
    key, record = backend.store.create(endpoint="demo")
    assert is_well_formed(key)
    assert record.key_hash == hash_key(key)
    assert (record.prefix, record.last4) == (key[:12], key[-4:])
    assert (record.kind, record.plan, record.created_at) == ("api", "pro", T0)
    assert (record.expires_at, record.revoked_at, record.rotated_from) == (None, None, None)
    assert backend.store.get(hash_key(key)) == record
    assert record.state(T0) == "active"
    assert record.display == f"{key[:12]}\u2026{key[-4:]}"


def test_every_field_round_trips(backend: Backend) -> None:
    _, record = backend.store.create(
        endpoint="chat-prod", kind="playground", plan="team", expires_at=T0 + 30 * DAY + 0.125,
        rate_per_min=0.5, daily_cap=100, name="Ünïcode label: ci / 42",
    )
    got = backend.store.get(record.key_hash)
    assert got == record
    assert got is not None and isinstance(got.daily_cap, int) and isinstance(got.rate_per_min, float)


def test_unknown_and_malformed_hashes_are_none(backend: Backend) -> None:
    backend.store.create(endpoint="demo")
    assert backend.store.get(hash_key(generate_key())) is None
    for bad in ("", "x" * 64, hash_key("a").upper(), hash_key("a") + "0", "' OR 1=1 --"):
        assert backend.store.get(bad) is None


BAD_CREATES: list[dict[str, Any]] = [
    {"endpoint": "Demo"},
    {"endpoint": ""},
    {"endpoint": "a" * 41},
    {"endpoint": "demo", "kind": "admin"},
    {"endpoint": "demo", "plan": "platinum"},
    {"endpoint": "demo", "expires_at": T0 - 1},
    {"endpoint": "demo", "expires_at": T0},
    {"endpoint": "demo", "expires_at": float("nan")},
    {"endpoint": "demo", "rate_per_min": 0},
    {"endpoint": "demo", "rate_per_min": -5.0},
    {"endpoint": "demo", "rate_per_min": True},
    {"endpoint": "demo", "daily_cap": 0},
    {"endpoint": "demo", "daily_cap": 2.5},
    {"endpoint": "demo", "name": "   "},
    {"endpoint": "demo", "name": "tab\there"},
    {"endpoint": "demo", "name": "n" * 129},
    {"endpoint": "demo", "rotated_from": "not-a-hash"},
]


def test_bad_create_arguments_are_config_errors_and_write_nothing(backend: Backend) -> None:
    # One test per backend (not one per case): each DynamoDB case would pay for a fresh table.
    for kwargs in BAD_CREATES:
        try:
            backend.store.create(**kwargs)
        except ConfigError as e:
            assert "\n" not in str(e), kwargs
        else:
            pytest.fail(f"create({kwargs}) was accepted")
    assert backend.store.list() == []


# -- list --------------------------------------------------------------------------------------------


def test_list_all_and_by_endpoint_in_creation_order(backend: Backend) -> None:
    made = []
    for endpoint in ("a", "b", "a", "c", "a"):
        backend.clock.advance(1)
        made.append(backend.store.create(endpoint=endpoint)[1])
    assert backend.store.list() == made
    assert backend.store.list("a") == [made[0], made[2], made[4]]
    assert backend.store.list("nobody") == []
    with pytest.raises(ConfigError):
        backend.store.list("NOT VALID")


# -- revoke ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["key", "hash", "display", "dots", "prefix", "padded"])
def test_revoke_by_any_identifier(backend: Backend, form: str) -> None:
    key, record = backend.store.create(endpoint="demo")
    _, other = backend.store.create(endpoint="demo")
    while other.prefix == record.prefix:  # the bare prefix must be unique (1 in 65536 it is not)
        _, other = backend.store.create(endpoint="demo")
    ident = {
        "key": key,
        "hash": record.key_hash,
        "display": record.display,
        "dots": f"{record.prefix}...{record.last4}",
        "prefix": record.prefix,
        "padded": f"  {key}\n",
    }[form]
    backend.clock.advance(5)
    revoked = backend.store.revoke(ident)
    assert revoked.key_hash == record.key_hash and revoked.revoked_at == T0 + 5
    assert revoked.state(T0 + 5) == "revoked"
    assert backend.store.get(record.key_hash) == revoked
    assert backend.store.get(other.key_hash) == other


def test_revoke_is_idempotent_and_keeps_the_first_time(backend: Backend) -> None:
    key, _ = backend.store.create(endpoint="demo")
    first = backend.store.revoke(key)
    backend.clock.advance(60)
    again = backend.store.revoke(key)
    assert again.revoked_at == first.revoked_at == T0
    assert backend.store.get(hash_key(key)) == first


def test_revoke_unknown_key(backend: Backend) -> None:
    backend.store.create(endpoint="demo")
    with pytest.raises(KeyNotFound) as e:
        backend.store.revoke(generate_key())
    assert "ws_live_" in str(e.value) and len(str(e.value)) < 200


def test_ambiguous_prefix_is_refused_and_the_full_display_form_resolves(backend: Backend) -> None:
    key1, rec1 = _record_with_prefix("abcd", "1111")
    key2, rec2 = _record_with_prefix("abcd", "2222")
    backend.put_raw(rec1)
    backend.put_raw(rec2)
    for ident in ("ws_live_abcd", "ws_live_ab", "ws_live_a"):
        with pytest.raises(AmbiguousKey) as e:
            backend.store.revoke(ident)
        assert rec1.display in str(e.value) and rec2.display in str(e.value)
        assert key1 not in str(e.value) and key2 not in str(e.value)
    assert backend.store.get(rec1.key_hash) == rec1  # nothing was revoked
    assert backend.store.revoke(rec2.display).key_hash == rec2.key_hash
    assert backend.store.get(rec1.key_hash) == rec1


def test_bad_identifiers_are_config_errors(backend: Backend) -> None:
    key, _ = backend.store.create(endpoint="demo")
    for bad in ("", "ws_live_", "ws_live_ABCD", key[:-1] + "g", key + "0", "sk-123", "ws_live_abcd\u2026"):
        with pytest.raises(ConfigError) as e:
            backend.store.revoke(bad)
        assert key not in str(e.value)  # a near-key is never echoed in full


# -- rotate ------------------------------------------------------------------------------------------


def test_rotate_keeps_both_keys_valid_for_the_grace_window(backend: Backend) -> None:
    old_key, old = backend.store.create(
        endpoint="demo", kind="playground", plan="team", rate_per_min=30, daily_cap=500, name="svc"
    )
    backend.clock.advance(100)
    new_key, new = backend.store.rotate(old.display, grace_s=3600)
    assert is_well_formed(new_key) and new_key != old_key
    assert new.rotated_from == old.key_hash and new.created_at == T0 + 100
    assert (new.endpoint, new.kind, new.plan, new.rate_per_min, new.daily_cap, new.name) == (
        "demo", "playground", "team", 30.0, 500, "svc",
    )
    stored_old = backend.store.get(old.key_hash)
    assert stored_old is not None and stored_old.expires_at == T0 + 100 + 3600
    assert backend.store.get(new.key_hash) == new
    end = T0 + 100 + 3600
    assert stored_old.state(end - 0.001) == "active" and new.state(end - 0.001) == "active"
    assert stored_old.state(end) == "expired" and new.state(end) == "active"
    assert {r.key_hash for r in backend.store.list("demo")} == {old.key_hash, new.key_hash}


def test_rotate_never_extends_an_earlier_expiry(backend: Backend) -> None:
    key, old = backend.store.create(endpoint="demo", expires_at=T0 + 60)
    _, new = backend.store.rotate(key, grace_s=24 * 3600)
    stored_old = backend.store.get(old.key_hash)
    assert stored_old is not None and stored_old.expires_at == T0 + 60


def test_rotate_with_zero_grace_ends_the_old_key_now(backend: Backend) -> None:
    key, old = backend.store.create(endpoint="demo")
    backend.clock.advance(10)
    backend.store.rotate(key, grace_s=0)
    stored_old = backend.store.get(old.key_hash)
    assert stored_old is not None and stored_old.state(T0 + 10) == "expired"


def test_rotated_key_gets_the_old_lifetime_from_now_unless_told(backend: Backend) -> None:
    key, _ = backend.store.create(endpoint="demo", expires_at=T0 + 30 * DAY)
    backend.clock.advance(29 * DAY)
    _, kept = backend.store.rotate(key, grace_s=3600)
    assert kept.expires_at == T0 + 29 * DAY + 30 * DAY
    _, never = backend.store.rotate(kept.display, grace_s=0, expires_at=None)
    assert never.expires_at is None
    _, chosen = backend.store.rotate(never.display, grace_s=0, expires_at=T0 + 40 * DAY)
    assert chosen.expires_at == T0 + 40 * DAY
    _, still_never = backend.store.rotate(chosen.display, grace_s=0, expires_at=None)
    _, inherit_never = backend.store.rotate(still_never.display, grace_s=0)
    assert inherit_never.expires_at is None


def test_rotate_refuses_revoked_and_expired_keys_and_bad_grace(backend: Backend) -> None:
    revoked_key, _ = backend.store.create(endpoint="demo")
    backend.store.revoke(revoked_key)
    with pytest.raises(OperationError, match="revoked"):
        backend.store.rotate(revoked_key)
    expiring_key, _ = backend.store.create(endpoint="demo", expires_at=T0 + 10)
    backend.clock.advance(10)
    with pytest.raises(OperationError, match="expired"):
        backend.store.rotate(expiring_key)
    live_key, _ = backend.store.create(endpoint="demo")
    for grace in (-1, float("inf"), 400 * DAY):
        with pytest.raises(ConfigError):
            backend.store.rotate(live_key, grace_s=grace)
    with pytest.raises(KeyNotFound):
        backend.store.rotate(generate_key())
    assert len(backend.store.list()) == 3  # failed rotations wrote nothing


def test_expiry_is_exact(backend: Backend) -> None:
    _, record = backend.store.create(endpoint="demo", expires_at=T0 + 60)
    got = backend.store.get(record.key_hash)
    assert got is not None
    assert got.state(T0 + 59.999) == "active" and got.state(T0 + 60) == "expired"


def test_threads_share_one_store(backend: Backend) -> None:
    import threading

    made: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                key, record = backend.store.create(endpoint="demo")
                assert backend.store.get(record.key_hash) == record
                made.append(key)
        except BaseException as e:  # surfaced below: a thread's assert would vanish otherwise
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(set(made)) == 80
    assert len(backend.store.list("demo")) == 80


def test_mint_key_helper(backend: Backend) -> None:
    key = mint_key(backend.url, "demo", kind="playground", daily_cap=100)
    record = backend.store.get(hash_key(key))
    assert record is not None and (record.kind, record.daily_cap, record.endpoint) == ("playground", 100, "demo")


# -- at rest ------------------------------------------------------------------------------------------


def test_only_hashes_are_at_rest(backend: Backend) -> None:
    key, record = backend.store.create(endpoint="demo", name="at-rest")
    new_key, new = backend.store.rotate(key, grace_s=60)
    dump = backend.raw_dump()
    assert record.key_hash.encode() in dump and new.key_hash.encode() in dump  # we read the real data
    for secret in (key, new_key):
        body = secret[len("ws_live_") :]
        assert body.encode() not in dump
        assert body[4:-4].encode() not in dump  # not even the middle of it
        assert body[4:-4].encode() not in dump.lower()


def test_an_item_written_by_the_stack_is_readable(aws_env: str) -> None:
    """The Pulumi program writes the initial key's item itself: required attributes only, numbers
    as integers. The store must read it (missing optional attributes = None)."""
    client = boto3.client("dynamodb")
    create_keys_table(TABLE, client)
    key = generate_key()
    client.put_item(TableName=TABLE, Item={
        "key_hash": {"S": hash_key(key)}, "endpoint": {"S": "demo"}, "kind": {"S": "api"},
        "plan": {"S": "pro"}, "prefix": {"S": key[:12]}, "last4": {"S": key[-4:]},
        "created_at": {"N": "1764000000"}, "daily_cap": {"N": "100"},
        "minted_by": {"S": "pulumi"},  # attributes this version does not know are ignored
    })
    store = open_key_store(f"dynamodb:{TABLE}")
    record = store.get(hash_key(key))
    assert record == KeyRecord(
        key_hash=hash_key(key), endpoint="demo", kind="api", plan="pro", prefix=key[:12],
        last4=key[-4:], created_at=1764000000.0, daily_cap=100,
    )
    assert store.list("demo") == [record]
    assert store.revoke(record.display).revoked_at is not None


def test_a_malformed_item_is_an_error_not_a_valid_key(aws_env: str) -> None:
    client = boto3.client("dynamodb")
    create_keys_table(TABLE, client)
    key = generate_key()
    client.put_item(TableName=TABLE, Item={
        "key_hash": {"S": hash_key(key)}, "endpoint": {"S": "demo"}, "kind": {"S": "superuser"},
        "plan": {"S": "pro"}, "prefix": {"S": key[:12]}, "last4": {"S": key[-4:]},
        "created_at": {"N": "1764000000"},
    })
    with pytest.raises(OperationError, match="malformed"):
        open_key_store(f"dynamodb:{TABLE}").get(hash_key(key))


# -- opening stores -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["", "sqlite:", "sqlite:   ", "sqlite::memory:", "postgres://db/keys", "redis://x", "dynamodb:",
     "dynamodb:ab", "dynamodb:bad/table", "keys.db", "SQLITE:keys.db"],
)
def test_bad_store_urls(url: str) -> None:
    with pytest.raises(ConfigError) as e:
        open_key_store(url)
    assert repr(url) in str(e.value) or url in str(e.value)
    assert "sqlite:" in str(e.value) or "dynamodb:" in str(e.value)


def test_missing_table_names_the_fix(aws_env: str) -> None:
    store = open_key_store("dynamodb:no-such-table")
    with pytest.raises(ConfigError, match="no such table"):
        store.get(hash_key(generate_key()))


def test_dynamodb_without_a_region(aws_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="AWS_REGION"):
        open_key_store(f"dynamodb:{TABLE}")


def test_unwritable_sqlite_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be opened"):
        open_key_store(f"sqlite:{blocker}/keys.db")


# -- sqlite specifics ---------------------------------------------------------------------------------


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "keys.db"
    store = open_key_store(f"sqlite:{path}")
    store.create(endpoint="demo")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def _create_many(url: str, endpoint: str, n: int) -> list[str]:
    store = open_key_store(url)
    try:
        return [hash_key(store.create(endpoint=endpoint)[0]) for _ in range(n)]
    finally:
        store.close()


def test_concurrent_creates_from_several_processes(tmp_path: Path) -> None:
    """Four processes race on a file that does not exist yet (schema creation included)."""
    url = f"sqlite:{tmp_path / 'race' / 'keys.db'}"
    procs, per_proc = 4, 25
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        results = pool.starmap(_create_many, [(url, f"ep{i}", per_proc) for i in range(procs)])
    hashes = [h for chunk in results for h in chunk]
    assert len(set(hashes)) == procs * per_proc
    store = open_key_store(url)
    assert {r.key_hash for r in store.list()} == set(hashes)
    for i in range(procs):
        assert {r.key_hash for r in store.list(f"ep{i}")} == set(results[i])


def test_sqlite_store_survives_fork(tmp_path: Path) -> None:
    """gunicorn may open the store in the master and fork workers: each child must reconnect."""
    url = f"sqlite:{tmp_path / 'keys.db'}"
    store = open_key_store(url)
    key, record = store.create(endpoint="demo")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: use the parent's store object
        code = 1
        try:
            got = store.get(record.key_hash)
            child_key, _ = store.create(endpoint="child")
            os.write(write, (child_key if got == record else "mismatch").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_key = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert is_well_formed(child_key)
    assert store.get(hash_key(child_key)) is not None
    assert store.get(record.key_hash) == record


# -- failures of the store itself ---------------------------------------------------------------------


def test_unreachable_dynamodb_is_unavailable_not_unknown(
    aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.net import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = open_key_store(f"dynamodb:{TABLE}")
    for call in (lambda: store.get(hash_key(generate_key())), lambda: store.create(endpoint="demo"),
                 store.list, lambda: store.revoke("ws_live_abcd")):
        with pytest.raises(KeyStoreUnavailable) as e:
            call()
        assert "\n" not in str(e.value) and TABLE in str(e.value)


def test_a_table_with_the_wrong_schema_is_a_one_line_error(aws_env: str) -> None:
    boto3.client("dynamodb").create_table(
        TableName=TABLE, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    with pytest.raises(KeyStoreUnavailable) as e:
        open_key_store(f"dynamodb:{TABLE}").create(endpoint="demo")
    assert "put_item" in str(e.value) and "\n" not in str(e.value)


def test_a_locked_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    from runtime.gate.keys._sqlite import SqliteKeyStore

    path = tmp_path / "keys.db"
    store = SqliteKeyStore(path, busy_timeout_s=0.05)
    key, _ = store.create(endpoint="demo")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(KeyStoreUnavailable, match="locked"):
            store.create(endpoint="demo")
        with pytest.raises(KeyStoreUnavailable, match="locked"):
            store.revoke(key)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.revoke(key).revoked_at is not None  # and it recovers


def test_the_stacks_own_initial_item_is_readable(aws_env: str) -> None:
    """components/keys.py builds the initial key's item itself; the store must read exactly that."""
    import json

    from components.keys import key_item

    client = boto3.client("dynamodb")
    create_keys_table(TABLE, client)
    key = generate_key()
    client.put_item(TableName=TABLE, Item=json.loads(key_item(key, "demo", "team", 1764000000)))
    store = open_key_store(f"dynamodb:{TABLE}")
    record = store.get(hash_key(key))
    assert record is not None
    assert (record.endpoint, record.plan, record.kind, record.display, record.created_at, record.name) == (
        "demo", "team", "api", f"{key[:12]}\u2026{key[-4:]}", 1764000000.0, "initial",
    )
    assert record.state(1764000001) == "active"
    assert store.list("demo") == [record]


def test_dynamodb_without_credentials(aws_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        open_key_store(f"dynamodb:{TABLE}").get(hash_key(generate_key()))
