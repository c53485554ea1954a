"""The local key store: one sqlite file, shared by every gate worker and the CLI.

WAL mode lets readers (gate workers) proceed while the CLI writes; writers serialise on sqlite's
own file lock, waited for up to ``busy_timeout``. A connection is never carried across fork():
gunicorn may build the app in the master, so each process opens its own on first use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.gate.keys._format import hashes_equal, is_key_hash
from runtime.gate.keys._record import KeyRecord, check_endpoint
from runtime.gate.keys._store import (
    DEFAULT_GRACE_S,
    KEEP_LIFETIME,
    Clock,
    Expiry,
    KeyStoreUnavailable,
    check_grace,
    matches_ident,
    new_key_record,
    parse_ident,
    pick_one,
    plan_rotation,
    rotated_expiry,
)
from warmstart.errors import ConfigError, OperationError

_COLUMNS = (
    "key_hash", "endpoint", "kind", "plan", "prefix", "last4", "created_at", "expires_at",
    "revoked_at", "rate_per_min", "daily_cap", "rotated_from", "name",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_hash     TEXT PRIMARY KEY NOT NULL,
    endpoint     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    plan         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    last4        TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL,
    revoked_at   REAL,
    rate_per_min REAL,
    daily_cap    INTEGER,
    rotated_from TEXT,
    name         TEXT
);
CREATE INDEX IF NOT EXISTS keys_endpoint ON keys (endpoint);
"""
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM keys"
BUSY_TIMEOUT_S = 15.0


def _row_to_record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(**dict(zip(_COLUMNS, row, strict=True)))


class SqliteKeyStore:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        create: bool = True,
    ) -> None:
        self.path = Path(path).expanduser()
        if not create and not self.path.is_file():
            raise ConfigError(
                f"keys={'sqlite:' + str(self.path)!r} does not exist; check the path, or mint a key first "
                "with `warmstart keys create --keys sqlite:PATH --endpoint E`"
            )
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        # Fail at open, with the path in the message, rather than on the first request.
        with self._locked() as conn:
            conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r})"

    # -- connection handling ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Hashes only, but still nobody else's business: create the file owner-only.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(
                f"keys={'sqlite:' + str(self.path)!r} cannot be opened ({e}); give a writable file path"
            ) from None
        return conn

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None or self._pid != os.getpid():
                # After fork the parent's connection is unusable here; drop it without closing
                # (closing could disturb the parent's locks).
                self._conn = self._connect()
                self._pid = os.getpid()
            try:
                yield self._conn
            except sqlite3.IntegrityError:
                raise
            except sqlite3.DatabaseError as e:  # locked past busy_timeout, disk full, I/O error
                where = f"keys={'sqlite:' + str(self.path)!r}"
                raise KeyStoreUnavailable(f"{where}: {' '.join(str(e).split())}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the file's write lock up front (no upgrade deadlocks)."""
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key_hash: str) -> KeyRecord | None:
        if not is_key_hash(key_hash):
            return None
        with self._locked() as conn:
            row = conn.execute(f"{_SELECT} WHERE key_hash = ?", (key_hash,)).fetchone()
        if row is None:
            return None
        record = _row_to_record(row)
        return record if hashes_equal(record.key_hash, key_hash) else None

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
        key, record = new_key_record(
            now=self._clock(), endpoint=endpoint, kind=kind, plan=plan, expires_at=expires_at,
            rate_per_min=rate_per_min, daily_cap=daily_cap, name=name, rotated_from=rotated_from,
        )
        with self._write() as conn:
            self._insert(conn, record)
        return key, record

    def list(self, endpoint: str | None = None) -> list[KeyRecord]:
        with self._locked() as conn:
            if endpoint is None:
                rows = conn.execute(f"{_SELECT} ORDER BY created_at, key_hash").fetchall()
            else:
                check_endpoint(endpoint)
                rows = conn.execute(
                    f"{_SELECT} WHERE endpoint = ? ORDER BY created_at, key_hash", (endpoint,)
                ).fetchall()
        return [_row_to_record(r) for r in rows]

    def revoke(self, ident: str) -> KeyRecord:
        with self._write() as conn:
            record = self._resolve(conn, ident)
            if record.revoked_at is not None:
                return record  # idempotent: the first revocation time stands
            now = self._clock()
            conn.execute("UPDATE keys SET revoked_at = ? WHERE key_hash = ?", (now, record.key_hash))
        return replace(record, revoked_at=now)

    def rotate(
        self, ident: str, grace_s: float = DEFAULT_GRACE_S, *, expires_at: Expiry = KEEP_LIFETIME
    ) -> tuple[str, KeyRecord]:
        check_grace(grace_s)  # bad input is refused before anything is looked up
        with self._write() as conn:
            # One transaction: the old key's shortened expiry and the new key land together.
            old = self._resolve(conn, ident)
            now = self._clock()
            old_until = plan_rotation(old, now, grace_s)
            key, record = new_key_record(
                now=now, endpoint=old.endpoint, kind=old.kind, plan=old.plan,
                expires_at=rotated_expiry(old, now, expires_at), rate_per_min=old.rate_per_min,
                daily_cap=old.daily_cap, name=old.name, rotated_from=old.key_hash,
            )
            self._insert(conn, record)
            conn.execute("UPDATE keys SET expires_at = ? WHERE key_hash = ?", (old_until, old.key_hash))
        return key, record

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _insert(conn: sqlite3.Connection, record: KeyRecord) -> None:
        values = record.to_dict()
        try:
            conn.execute(
                f"INSERT INTO keys ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                tuple(values[c] for c in _COLUMNS),
            )
        except sqlite3.IntegrityError:  # a 256-bit collision: not in this universe, but never overwrite
            raise OperationError(f"key {record.display} already exists; create again") from None

    def _resolve(self, conn: sqlite3.Connection, ident: str) -> KeyRecord:
        parsed = parse_ident(ident)
        if parsed.key_hash is not None:
            row = conn.execute(f"{_SELECT} WHERE key_hash = ?", (parsed.key_hash,)).fetchone()
            return pick_one(ident, [_row_to_record(row)] if row else [])
        assert parsed.prefix is not None
        rows = conn.execute(
            f"{_SELECT} WHERE substr(prefix, 1, ?) = ?", (len(parsed.prefix), parsed.prefix)
        ).fetchall()
        return pick_one(ident, [r for r in map(_row_to_record, rows) if matches_ident(r, parsed)])
