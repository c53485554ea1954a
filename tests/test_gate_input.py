"""Bad input gets the right 4xx with an OpenAI-shaped body, never a 5xx; fuzzed routes leak no lease.

Against the gate under real gunicorn; raw sockets where an HTTP client would refuse to misbehave.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gate_server import GateServer, gate_config
from tests.support.upstream import UpstreamProcess

MAX_BODY = 4096
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, upstream_server: UpstreamProcess,
         redis_server: Any) -> Iterator[GateServer]:
    d = tmp_path_factory.mktemp("gate-input")
    server = GateServer(d, gate_config([upstream_server.url], f"sqlite:{d / 'keys.db'}", store=redis_server.url,
                                       max_body_bytes=MAX_BODY, body_timeout_s=1, max_tokens_limit=8192))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(gate: GateServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=gate.url, headers={"Authorization": f"Bearer {gate.mint()}"}, timeout=30) as c:
        yield c


def assert_openai_error(r: httpx2.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    assert r.headers["x-request-id"]
    return dict(err)


def raw(gate: GateServer, data: bytes, *, then: bytes = b"", pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=15) as s:
        s.sendall(data)
        if pause:
            time.sleep(pause)
            try:
                s.sendall(then)
            except OSError:
                pass
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b'"error"' in out and out.rstrip().endswith(b"}"):
                break
        return out


@pytest.mark.parametrize(("body", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    (b'"a string"', "invalid_json", None),
    (b"", "invalid_json", None),
    (json.dumps({"model": "default"}).encode(), "missing_required_parameter", "messages"),
    (json.dumps({"model": "default", "messages": "hi"}).encode(), "invalid_type", "messages"),
    (json.dumps({"model": "default", "messages": []}).encode(), "invalid_type", "messages"),
    (json.dumps({"model": "default", "messages": [{"content": "x"}]}).encode(), "invalid_type", "messages[0]"),
    (json.dumps({"model": 5, "messages": MSGS}).encode(), "invalid_type", "model"),
    (json.dumps({"model": "default", "messages": MSGS, "stream": "yes"}).encode(), "invalid_type", "stream"),
    (json.dumps({"model": "default", "messages": MSGS, "max_tokens": 10**12}).encode(), "invalid_value", "max_tokens"),
    (json.dumps({"model": "default", "messages": MSGS, "max_tokens": -1}).encode(), "invalid_value", "max_tokens"),
    (json.dumps({"model": "default", "messages": MSGS, "max_tokens": "9"}).encode(), "invalid_type", "max_tokens"),
    (json.dumps({"model": "default", "messages": MSGS, "n": 10**6}).encode(), "invalid_value", "n"),
    (b"[" * 3000 + b"]" * 1000, "invalid_json", None),
])
def test_bad_chat_bodies_are_400(http: httpx2.Client, body: bytes, code: str, param: str | None) -> None:
    err = assert_openai_error(http.post("/v1/chat/completions", content=body,
                                        headers={"Content-Type": "application/json"}), 400, code)
    assert err["param"] == param


def test_other_routes_validate_their_inputs(http: httpx2.Client) -> None:
    assert_openai_error(http.post("/v1/completions", json={"model": "default"}), 400, "missing_required_parameter")
    assert_openai_error(http.post("/v1/completions", json={"prompt": {"a": 1}}), 400, "invalid_type")
    assert_openai_error(http.post("/v1/embeddings", json={"input": []}), 400, "invalid_type")
    assert_openai_error(http.post("/v1/embeddings", json={"input": "a", "stream": True}), 400, "invalid_value")
    assert_openai_error(http.post("/v1/chat/completions", json={"model": "x" * 10_000, "messages": MSGS}),
                        413 if len(json.dumps({"model": "x" * 10_000})) > MAX_BODY else 404)
    assert_openai_error(http.get("/v1/chat/completions"), 405, "method_not_allowed")
    assert_openai_error(http.post("/v1/nope", json={}), 404, "unknown_url")


def test_body_over_the_limit_is_413_before_it_is_read(gate: GateServer, http: httpx2.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * MAX_BODY}]}),
                        413, "request_too_large")
    # Content-Length alone decides: the gate answers without waiting for a body that never comes.
    key = http.headers["Authorization"]
    out = raw(gate, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: " + key.encode() + b"\r\nContent-Length: 999999999\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413") and b"request_too_large" in out
    # chunked bodies have no length up front: counted as they arrive
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000
    assert_openai_error(http.post("/v1/chat/completions", content=chunks()), 413, "request_too_large")


def test_slow_body_is_408_not_a_stuck_worker(gate: GateServer, http: httpx2.Client) -> None:
    key = http.headers["Authorization"]
    out = raw(gate, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: " + key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"mod",
              then=b"el\"", pause=2.0)
    assert out.startswith(b"HTTP/1.1 408") and b"request_timeout" in out
    assert http.get("/healthz").status_code == 200


def test_header_injection_and_hostile_headers(gate: GateServer, http: httpx2.Client) -> None:
    key = http.headers["Authorization"]
    body = json.dumps({"model": "default", "messages": MSGS}).encode()
    out = raw(gate, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: " + key.encode() + b"\r\nX-Request-Id: abc\rSet-Cookie: evil=1\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"set-cookie" not in head and not head.startswith(b"http/1.1 5")
    r = http.post("/v1/chat/completions", json={"model": "default", "messages": MSGS},
                  headers={"X-Request-Id": "<script>" + "a" * 300})
    assert r.status_code == 200 and r.headers["x-request-id"].isalnum()  # replaced, not echoed
    for bad in ("Bearer", "Basic abc", "Bearer ws_live_zz", "Bearer " + "ws_live_" + "a" * 65):
        assert_openai_error(http.get("/v1/models", headers={"Authorization": bad}), 401)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["default", "test-model", "other"]) | json_values,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                 "content": st.text(max_size=30)}), max_size=3) | json_values,
    "prompt": st.text(max_size=30) | json_values,
    "input": st.text(max_size=30) | st.lists(st.text(max_size=5), max_size=3) | json_values,
    "stream": st.booleans() | json_values,
    "max_tokens": st.integers(-5, 10**9) | json_values,
    "n": st.integers(-2, 300) | json_values,
    "stream_options": st.just({"include_usage": True}) | json_values,
    "temperature": json_values,
    "tools": json_values,
}).map(lambda d: {**d, "ws_test": {"tokens": 2, "interval_ms": 0}})


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                              "/healthz", "/v1/../v1/models", "/v1/chat/completions/x", "/%00"]),
       method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]),
       body=fields | json_values.map(lambda v: v) | st.binary(max_size=64),
       headers=st.dictionaries(st.sampled_from(["X-Request-Id", "Content-Type", "Accept", "X-Forwarded-For"]),
                               st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
                               max_size=3))
def test_fuzzed_requests_never_5xx(http: httpx2.Client, route: str, method: str, body: Any,
                                   headers: dict[str, str]) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.request(method, route, content=content, headers=headers)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.text.rstrip().endswith("[DONE]")


def test_after_everything_no_lease_is_left(gate: GateServer, http: httpx2.Client) -> None:
    import redis

    r = redis.Redis.from_url(gate.config["store"], decode_responses=True)
    tag = f"{{ws:{gate.endpoint}}}"
    assert r.zcard(f"{tag}:leases") == 0
    assert all(int(v) == 0 for v in r.hgetall(f"{tag}:replicas").values())
    assert gate.metric("ws_in_flight") == 0 and gate.metric("ws_lease_leaks_total") == 0
    assert gate.metric("ws_requests_total", status="500") == 0
    assert "Traceback" not in gate.log()
