"""KeyRecord: what the store holds about one key (never the key itself)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from runtime.gate.keys._format import KEY_PREFIX, display_form, is_key_hash
from warmstart.errors import ConfigError
from warmstart.spec import PLANS

KeyKind = Literal["api", "playground"]
KeyState = Literal["active", "expired", "revoked"]
KINDS: tuple[str, ...] = ("api", "playground")

# The same rule as endpoint names in warmstart.spec: they become part of AWS resource names.
_ENDPOINT_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
_PREFIX_RE = re.compile(r"ws_live_[0-9a-f]{4}")
_LAST4_RE = re.compile(r"[0-9a-f]{4}")
MAX_NAME_LEN = 128


def check_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not _ENDPOINT_RE.fullmatch(endpoint):
        raise ConfigError(
            f"endpoint={endpoint!r} is not a valid endpoint name; use 1-40 lowercase letters, digits and '-'"
        )
    return endpoint


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not a key kind; use one of {', '.join(KINDS)}")
    return kind


def check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise ConfigError(f"plan={plan!r} is not a plan; use one of {', '.join(PLANS)}")
    return plan


def check_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise ConfigError(
            f"name={name!r} is not a usable key name; use 1-{MAX_NAME_LEN} printable characters"
        )
    return name


def check_rate(rate_per_min: float | None) -> float | None:
    if rate_per_min is None:
        return None
    if isinstance(rate_per_min, bool) or not isinstance(rate_per_min, int | float) or not (
        0 < rate_per_min <= 1e9
    ):
        raise ConfigError(f"rate_per_min={rate_per_min!r} must be a number above 0; e.g. 60 (per minute)")
    return float(rate_per_min)


def check_daily_cap(daily_cap: int | None) -> int | None:
    if daily_cap is None:
        return None
    if isinstance(daily_cap, bool) or not isinstance(daily_cap, int) or not (1 <= daily_cap <= 10**12):
        raise ConfigError(f"daily_cap={daily_cap!r} must be a whole number of requests, at least 1")
    return daily_cap


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key's scope, plan, limits and lifecycle. Times are unix seconds (float)."""

    key_hash: str
    endpoint: str
    kind: KeyKind
    plan: str
    prefix: str
    last4: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    rate_per_min: float | None = None
    daily_cap: int | None = None
    rotated_from: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        # Records also come from DynamoDB items written by other code (the stack's initial key):
        # reject a malformed one loudly instead of authorising requests with it.
        if not is_key_hash(self.key_hash):
            raise ConfigError(f"key_hash={self.key_hash!r} is not a lowercase sha256 hex digest")
        if not _PREFIX_RE.fullmatch(self.prefix) or not _LAST4_RE.fullmatch(self.last4):
            raise ConfigError(
                f"prefix={self.prefix!r}/last4={self.last4!r} do not look like a {KEY_PREFIX} key's ends"
            )
        check_kind(self.kind)
        if self.rotated_from is not None and not is_key_hash(self.rotated_from):
            raise ConfigError(f"rotated_from={self.rotated_from!r} is not a key hash")

    @property
    def display(self) -> str:
        """``ws_live_1a2b…9f3c``: safe for logs, lists and error messages."""
        return display_form(self.prefix, self.last4)

    def state(self, now: float) -> KeyState:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public_dict(self, now: float) -> dict[str, Any]:
        """For output a person reads: the display form and the state, no hash."""
        data = self.to_dict()
        del data["key_hash"]
        data["rotated_from"] = self.rotated_from[:12] if self.rotated_from else None
        data["display"] = self.display
        data["state"] = self.state(now)
        return data
