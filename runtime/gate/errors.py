"""Every error the gate answers with, in one place, in OpenAI's shape.

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

The official SDKs map the status to their exception classes (401 AuthenticationError, 403
PermissionDeniedError, 429 RateLimitError, ...), honour `Retry-After` / `retry-after-ms`, and stop
retrying on `x-should-retry: false`. Streams that fail after their headers were sent carry the
same body as an SSE `error` event (`sse_error`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field


@dataclass
class GateError(Exception):
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after_s: float | None = None
    should_retry: bool | None = None
    reason: str = ""  # the rejection reason for metrics (ws_rejections_total{reason})
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response_headers(self) -> dict[str, str]:
        h = dict(self.headers)
        if self.retry_after_s is not None:
            h["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
            h["retry-after-ms"] = str(max(1, math.ceil(self.retry_after_s * 1000)))
        if self.should_retry is not None:
            h["x-should-retry"] = "true" if self.should_retry else "false"
        return h

    def sse(self) -> bytes:
        return b"event: error\ndata: " + json.dumps(self.body()).encode() + b"\n\n"


# -- 4xx: the caller's request -------------------------------------------------------------------

def missing_key() -> GateError:
    return GateError(401, "Missing API key: send 'Authorization: Bearer ws_live_...'.",
                     "invalid_request_error", "missing_api_key", reason="auth")


def invalid_key(display: str) -> GateError:
    return GateError(401, f"Incorrect API key provided: {display}.", "invalid_request_error",
                     "invalid_api_key", reason="auth")


def key_forbidden(display: str, why: str, code: str) -> GateError:
    return GateError(403, f"API key {display} {why}.", "permission_error", code, reason=code)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> GateError:
    return GateError(400, message, "invalid_request_error", code, param, reason="invalid")


def model_not_found(model: str) -> GateError:
    return GateError(404, f"The model `{model}` does not exist or you do not have access to it.",
                     "invalid_request_error", "model_not_found", "model", reason="model")


def not_found(path: str) -> GateError:
    return GateError(404, f"Unknown route {path!r}; see /v1/models, /v1/chat/completions, /v1/completions, "
                     "/v1/embeddings.", "invalid_request_error", "unknown_url", reason="route")


def method_not_allowed(method: str, path: str) -> GateError:
    return GateError(405, f"Method {method} is not allowed on {path}.", "invalid_request_error",
                     "method_not_allowed", reason="method")


def body_timeout(limit_s: float) -> GateError:
    return GateError(408, f"The request body did not arrive within {limit_s:g} s.", "invalid_request_error",
                     "request_timeout", reason="slow_body")


def too_large(limit: int) -> GateError:
    return GateError(413, f"Request body exceeds {limit} bytes.", "invalid_request_error",
                     "request_too_large", reason="too_large")


def bad_content_type(got: str) -> GateError:
    return GateError(415, f"Content-Type {got!r} is not supported; send application/json.",
                     "invalid_request_error", "unsupported_media_type", reason="invalid")


# -- 429 / 503: capacity and quota ---------------------------------------------------------------

def rate_limited(retry_after_s: float, limit: int) -> GateError:
    return GateError(429, f"Rate limit reached: {limit} requests per minute for this key. "
                     f"Retry after {retry_after_s:.2f} s.", "requests", "rate_limit_exceeded",
                     retry_after_s=retry_after_s, reason="rate")


def over_budget(retry_after_s: float, budget: int) -> GateError:
    return GateError(429, f"Concurrency limit reached: {budget} requests in flight for this endpoint. "
                     f"Retry after {retry_after_s:.2f} s.", "requests", "concurrency_limit_exceeded",
                     retry_after_s=retry_after_s, reason="budget")


def daily_cap(cap: int, reset_s: float) -> GateError:
    return GateError(429, f"Daily request cap reached: {cap} requests per day for this key; it resets in "
                     f"{reset_s / 3600:.1f} h (00:00 UTC).", "insufficient_quota", "daily_cap_exceeded",
                     should_retry=False, reason="daily_cap")


def stopped(retry_after_s: float) -> GateError:
    # x-should-retry false: a stopped endpoint stays stopped until an operator starts it; SDKs
    # should not sit out Retry-After on it (the header stays, for people and dashboards).
    return GateError(503, "This endpoint is stopped; start it with `warmstart endpoint start`.",
                     "service_unavailable", "endpoint_stopped", retry_after_s=retry_after_s,
                     should_retry=False, reason="stopped")


def capacity_unavailable(retry_after_s: float, waited_s: float) -> GateError:
    return GateError(503, f"No replica had capacity within {waited_s:.0f} s (replicas are starting). "
                     f"Retry after {retry_after_s:.0f} s.", "service_unavailable", "capacity_unavailable",
                     retry_after_s=retry_after_s, reason="hold_timeout")


def store_unavailable() -> GateError:
    return GateError(503, "The admission store is unreachable; retry shortly.", "service_unavailable",
                     "store_unavailable", retry_after_s=2, reason="store")


def key_store_unavailable() -> GateError:
    return GateError(503, "The key store is unreachable; retry shortly.", "service_unavailable",
                     "key_store_unavailable", retry_after_s=2, reason="key_store")


def pool_unavailable() -> GateError:
    return GateError(503, "The replica pool cannot be read right now; retry shortly.", "service_unavailable",
                     "pool_unavailable", retry_after_s=5, reason="pool")


# -- 5xx: the upstream ---------------------------------------------------------------------------

def upstream_failed(detail: str) -> GateError:
    return GateError(502, f"The model server failed: {detail}.", "server_error", "upstream_error",
                     reason="upstream")


def upstream_timeout(limit_s: float) -> GateError:
    return GateError(504, f"The model server did not answer within {limit_s:g} s; stream long outputs "
                     "(stream=true).", "server_error", "upstream_timeout", reason="timeout")


def internal(request_id: str | None = None) -> GateError:
    ref = f" (request id {request_id})" if request_id else ""
    return GateError(500, f"Internal gate error{ref}; the request id identifies it in the gate's logs.",
                     "server_error", "internal_error", reason="internal")
