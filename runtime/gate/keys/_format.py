"""The key format and its hash: the only place that knows what a key looks like.

A key is ``ws_live_`` + 64 lowercase hex digits (32 bytes from :mod:`secrets`, 256 bits). Only
``sha256(key)`` is stored. A fast, unsalted hash is the right tool here (unlike passwords): a key
carries 256 bits of entropy, so there is no dictionary to precompute and nothing to slow down.
The Pulumi program computes the same hash for the initial key it mints.

Why lookup by hash is safe without a constant-time compare of the key itself: the presented key
is hashed before it touches any comparison or index, so whatever the store's lookup leaks through
timing concerns the *hash of the attacker's guess*, and turning a learned hash prefix into a key
needs a SHA-256 preimage. Where two secrets-derived strings are compared in Python we still use
:func:`hmac.compare_digest` (:func:`hashes_equal`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

KEY_PREFIX = "ws_live_"
"""Every key starts with this; secret scanners (and people) recognise it."""

KEY_HEX_LEN = 64
KEY_LEN = len(KEY_PREFIX) + KEY_HEX_LEN
DISPLAY_PREFIX_LEN = 12
"""``ws_live_`` + 4 hex digits: enough to tell keys apart in a list, far too little to guess one."""

_KEY_RE = re.compile(r"ws_live_[0-9a-f]{64}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def generate_key() -> str:
    """A new key: 32 random bytes from the OS CSPRNG, as lowercase hex."""
    return KEY_PREFIX + secrets.token_hex(KEY_HEX_LEN // 2)


def is_well_formed(value: object) -> bool:
    """True only for ``ws_live_`` + exactly 64 lowercase hex digits (no whitespace, no newline)."""
    # The length check first keeps the regex off megabyte-long Authorization headers.
    return isinstance(value, str) and len(value) == KEY_LEN and _KEY_RE.fullmatch(value) is not None


def is_key_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == KEY_HEX_LEN and _HASH_RE.fullmatch(value) is not None


def hash_key(key: str) -> str:
    """SHA-256 (lowercase hex) of the full key string, prefix included."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def hashes_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def key_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LEN]


def key_last4(key: str) -> str:
    return key[-4:]


def display_form(prefix: str, last4: str) -> str:
    """How a key is shown anywhere after creation: ``ws_live_1a2b…9f3c``."""
    return f"{prefix}\u2026{last4}"
