"""LiteLLM virtual keys without LiteLLM's database: its `custom_auth` hook, loaded by the proxy.

LiteLLM keeps virtual keys in PostgreSQL through Prisma, whose engine binaries are downloaded at
first use from Prisma's own servers (not a package registry), which this machine cannot reach.
This hook plays the part of that table: it looks the presented key's SHA-256 up in the keys the
benchmark minted (BENCH_LITELLM_KEYS: comma-separated hex digests) and returns LiteLLM's own
`UserAPIKeyAuth` carrying the key's `max_parallel_requests`, which LiteLLM's parallel-request
limiter then enforces per key, exactly as for a key read from its database (after the first
read LiteLLM serves DB keys from its in-memory cache too). `custom_auth_run_common_checks`
keeps LiteLLM's usual per-request checks on this path.

Runs inside the proxy's interpreter (.venv-bench), never imported by warmstart.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from fastapi import Request  # type: ignore[import-not-found,unused-ignore]
from litellm.proxy._types import UserAPIKeyAuth  # type: ignore[import-not-found,unused-ignore]

_KEYS = tuple(k for k in os.environ.get("BENCH_LITELLM_KEYS", "").split(",") if k)
_PARALLEL = int(os.environ.get("BENCH_LITELLM_MAX_PARALLEL", "240"))
_MODEL = os.environ.get("BENCH_MODEL", "test-model")


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    token = api_key.removeprefix("Bearer ").strip()
    digest = hashlib.sha256(token.encode()).hexdigest()
    if not any(hmac.compare_digest(digest, k) for k in _KEYS):
        raise Exception("invalid virtual key")
    return UserAPIKeyAuth(api_key=digest, token=digest, key_alias="bench",
                          max_parallel_requests=_PARALLEL, models=[_MODEL])
