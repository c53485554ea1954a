"""API keys: format, hashing, records and the stores that hold them.

    key = generate_key()                  # "ws_live_" + 64 hex; shown once
    record = store.get(hash_key(key))     # stores keep only the SHA-256

``open_key_store("sqlite:PATH" | "dynamodb:TABLE")`` gives a KeyStore; the gate wraps it in
``CachedKeyStore(store, ttl_s)``, which bounds how long a revocation takes to bite (ttl_s).
"""

from runtime.gate.keys._cache import CachedKeyStore
from runtime.gate.keys._format import (
    KEY_PREFIX,
    display_form,
    generate_key,
    hash_key,
    hashes_equal,
    is_key_hash,
    is_well_formed,
)
from runtime.gate.keys._record import KeyKind, KeyRecord, KeyState
from runtime.gate.keys._store import (
    DEFAULT_GRACE_S,
    KEEP_LIFETIME,
    AmbiguousKey,
    Expiry,
    KeyNotFound,
    KeyStore,
    KeyStoreUnavailable,
    open_key_store,
    parse_ident,
)

__all__ = [
    "DEFAULT_GRACE_S",
    "KEEP_LIFETIME",
    "KEY_PREFIX",
    "AmbiguousKey",
    "CachedKeyStore",
    "Expiry",
    "KeyKind",
    "KeyNotFound",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyStoreUnavailable",
    "display_form",
    "generate_key",
    "hash_key",
    "hashes_equal",
    "is_key_hash",
    "is_well_formed",
    "open_key_store",
    "parse_ident",
]
