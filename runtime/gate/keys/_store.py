"""The KeyStore contract, what both backends share, and ``open_key_store(url)``.

Both stores (sqlite locally, DynamoDB on AWS) pass the same contract tests
(tests/test_keys_store.py). The pure parts — building a new record, resolving an identifier,
planning a rotation — live here so the backends only do storage.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, runtime_checkable

from runtime.gate.keys._format import (
    DISPLAY_PREFIX_LEN,
    KEY_PREFIX,
    generate_key,
    hash_key,
    is_key_hash,
    is_well_formed,
    key_last4,
    key_prefix,
)
from runtime.gate.keys._record import (
    KeyRecord,
    check_daily_cap,
    check_endpoint,
    check_kind,
    check_name,
    check_plan,
    check_rate,
)
from warmstart.errors import ConfigError, OperationError

Clock = Callable[[], float]

KEEP_LIFETIME: Final[Literal["keep"]] = "keep"
"""rotate()'s default for the new key's expiry: the old key's lifetime (expires - created), from now."""
Expiry = float | None | Literal["keep"]

DEFAULT_GRACE_S = 24 * 3600.0
"""How long a rotated-out key keeps working unless told otherwise: a day to roll the new one out."""

MAX_GRACE_S = 365 * 24 * 3600.0


class KeyNotFound(OperationError):
    """No key matches the identifier given to revoke/rotate."""


class AmbiguousKey(OperationError):
    """A display prefix matches more than one key."""


class KeyStoreUnavailable(OperationError):
    """The store could not be read or written (network, throttling, permissions, a locked file).
    The gate answers 503 for this, never 401: an outage is not a bad key."""


@runtime_checkable
class KeyStore(Protocol):
    """Where key records live. Plaintext keys never reach a store: only their SHA-256."""

    def get(self, key_hash: str) -> KeyRecord | None: ...

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
    ) -> tuple[str, KeyRecord]: ...

    def list(self, endpoint: str | None = None) -> list[KeyRecord]: ...

    def revoke(self, ident: str) -> KeyRecord: ...

    def rotate(
        self, ident: str, grace_s: float = DEFAULT_GRACE_S, *, expires_at: Expiry = KEEP_LIFETIME
    ) -> tuple[str, KeyRecord]: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Identifiers: how a person names a key after creation


@dataclass(frozen=True)
class Ident:
    """A parsed identifier: an exact hash, or a display prefix (optionally with the last 4)."""

    key_hash: str | None = None
    prefix: str | None = None
    last4: str | None = None


_DISPLAY_RE = re.compile(r"(ws_live_[0-9a-f]{4})(?:\u2026|\.\.\.)([0-9a-f]{4})")
_PARTIAL_RE = re.compile(r"ws_live_[0-9a-f]{1,4}")


def redact(value: str) -> str:
    """What an error message may echo of something that might be (nearly) a key."""
    return value if len(value) <= DISPLAY_PREFIX_LEN + 4 else value[:DISPLAY_PREFIX_LEN] + "\u2026"


def parse_ident(ident: str) -> Ident:
    """A full key, a key hash, ``ws_live_1a2b…9f3c`` (or ``...``), or a prefix like ``ws_live_1a2b``."""
    if not isinstance(ident, str):
        raise ConfigError(f"key identifier {ident!r} must be a string")
    value = ident.strip()
    if is_well_formed(value):
        return Ident(key_hash=hash_key(value))
    if is_key_hash(value):
        return Ident(key_hash=value)
    display = _DISPLAY_RE.fullmatch(value)
    if display:
        return Ident(prefix=display.group(1), last4=display.group(2))
    if _PARTIAL_RE.fullmatch(value):
        return Ident(prefix=value)
    raise ConfigError(
        f"key {redact(value)!r} is not a key, a key hash or a display prefix; use the "
        f"{KEY_PREFIX}1a2b\u20269f3c form that `warmstart keys list` shows"
    )


def pick_one(ident: str, matches: Sequence[KeyRecord]) -> KeyRecord:
    if not matches:
        raise KeyNotFound(f"no key matches {redact(ident.strip())!r}; see `warmstart keys list`")
    if len(matches) > 1:
        shown = ", ".join(sorted(r.display for r in matches)[:10])
        raise AmbiguousKey(
            f"{redact(ident.strip())!r} matches {len(matches)} keys ({shown}); "
            "give the full display form (prefix\u2026last4) or the key itself"
        )
    return matches[0]


def matches_ident(record: KeyRecord, parsed: Ident) -> bool:
    if parsed.prefix is None:
        return False
    return record.prefix.startswith(parsed.prefix) and (parsed.last4 is None or record.last4 == parsed.last4)


# ---------------------------------------------------------------------------------------------
# Pure record building


def check_expiry(expires_at: float | None, now: float) -> float | None:
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float) or not math.isfinite(expires_at):
        raise ConfigError(f"expires_at={expires_at!r} must be unix seconds or None (never)")
    if expires_at <= now:
        raise ConfigError(f"expires_at={expires_at!r} is in the past; give a future time or 'never'")
    return float(expires_at)


def new_key_record(
    *,
    now: float,
    endpoint: str,
    kind: str = "api",
    plan: str = "pro",
    expires_at: float | None = None,
    rate_per_min: float | None = None,
    daily_cap: int | None = None,
    name: str | None = None,
    rotated_from: str | None = None,
) -> tuple[str, KeyRecord]:
    """Validate every field, then mint a key. Returns the plaintext (to show once) and its record."""
    check_endpoint(endpoint)
    check_kind(kind)
    check_plan(plan)
    expires_at = check_expiry(expires_at, now)
    rate_per_min = check_rate(rate_per_min)
    daily_cap = check_daily_cap(daily_cap)
    check_name(name)
    if rotated_from is not None and not is_key_hash(rotated_from):
        raise ConfigError(f"rotated_from={rotated_from!r} must be the sha256 hex of the replaced key")
    key = generate_key()
    record = KeyRecord(
        key_hash=hash_key(key),
        endpoint=endpoint,
        kind=kind,  # type: ignore[arg-type]  # checked by check_kind above
        plan=plan,
        prefix=key_prefix(key),
        last4=key_last4(key),
        created_at=now,
        expires_at=expires_at,
        rate_per_min=rate_per_min,
        daily_cap=daily_cap,
        rotated_from=rotated_from,
        name=name,
    )
    return key, record


def check_grace(grace_s: float) -> float:
    if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or not (0 <= grace_s <= MAX_GRACE_S):
        raise ConfigError(f"grace_s={grace_s!r} must be between 0 and {MAX_GRACE_S:.0f} seconds (365 days)")
    return float(grace_s)


def plan_rotation(old: KeyRecord, now: float, grace_s: float) -> float:
    """The old key's new expiry: now + grace, but never later than an expiry it already had."""
    if old.revoked_at is not None:
        raise OperationError(f"key {old.display} is revoked; create a new key instead of rotating it")
    if old.state(now) == "expired":
        raise OperationError(f"key {old.display} has expired; create a new key instead of rotating it")
    until = now + check_grace(grace_s)
    return until if old.expires_at is None else min(old.expires_at, until)


def rotated_expiry(old: KeyRecord, now: float, expires_at: Expiry) -> float | None:
    """The new key's expiry. By default a 30-day key rotated on day 29 gets 30 fresh days (rotation
    is the normal answer to an approaching expiry), and a key that never expired still never does."""
    if expires_at != KEEP_LIFETIME:
        return check_expiry(expires_at, now)
    if old.expires_at is None:
        return None
    return now + max(old.expires_at - old.created_at, 1.0)


# ---------------------------------------------------------------------------------------------
# Opening a store


def open_key_store(url: str, *, clock: Clock = time.time, create: bool = True) -> KeyStore:
    """``sqlite:PATH`` (created with its schema if missing, unless ``create=False``) or
    ``dynamodb:TABLE`` (the stack creates the table)."""
    if not isinstance(url, str):
        raise ConfigError(f"keys={url!r} is not a key store; use sqlite:PATH or dynamodb:TABLE")
    scheme, sep, rest = url.partition(":")
    if sep and scheme == "sqlite":
        if not rest.strip() or rest.strip() == ":memory:":
            raise ConfigError(
                f"keys={url!r} names no file; use sqlite:PATH, e.g. sqlite:.warmstart/keys.db "
                "(an in-memory db would not be shared between gate workers)"
            )
        from runtime.gate.keys._sqlite import SqliteKeyStore

        return SqliteKeyStore(rest, clock=clock, create=create)
    if sep and scheme == "dynamodb":
        from runtime.gate.keys._dynamodb import DynamoKeyStore

        return DynamoKeyStore(rest, clock=clock)
    raise ConfigError(
        f"keys={url!r} is not a key store; use sqlite:PATH (local) or dynamodb:TABLE (AWS)"
    )
