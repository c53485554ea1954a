"""The gate's HTTP contract, through the official openai client, against the gate under real
gunicorn in front of the deterministic upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from runtime.gate.keys import open_key_store
from tests.support.gate_server import GateServer, gate_config
from tests.support.upstream import UpstreamProcess

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, upstream_server: UpstreamProcess) -> Iterator[GateServer]:
    d = tmp_path_factory.mktemp("gate")
    server = GateServer(d, gate_config([upstream_server.url], f"sqlite:{d / 'keys.db'}"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(gate: GateServer) -> str:
    return gate.mint()


def client(gate: GateServer, key: str, retries: int = 0, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=retries, **kw)


class Recorder:
    """Every HTTP response the openai client received (its retries included), with arrival times."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int, dict[str, str]]] = []
        self.http = httpx2.Client(event_hooks={"response": [self._hook]})

    def _hook(self, r: httpx2.Response) -> None:
        self.seen.append((time.monotonic(), r.status_code, dict(r.headers)))


def test_chat_stream_completions_embeddings_models(gate: GateServer, key: str, upstream_server: UpstreamProcess) -> None:
    c = client(gate, key)
    r = c.chat.completions.create(model="default", messages=MSGS, extra_body={"ws_test": {"tokens": 3}})
    assert r.choices[0].message.content == "tok0 tok1 tok2" and r.model == "test-model"
    chunks = list(c.chat.completions.create(model="test-model", messages=MSGS, stream=True,
                                            extra_body={"ws_test": {"tokens": 5}}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    comp = c.completions.create(model="default", prompt="x", extra_body={"ws_test": {"tokens": 2}})
    assert comp.choices[0].text == "tok0 tok1"
    emb = c.embeddings.create(model="default", input=["a", "bb"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert {m.id for m in c.models.list()} == {"test-model", "default"}
    assert c.models.retrieve("default").id == "default"


def test_bodies_pass_through_unchanged(gate: GateServer, key: str, upstream_server: UpstreamProcess) -> None:
    extra = {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "logprobs": True, "top_logprobs": 2, "n": 2, "seed": 7,
    }
    vendor = {"vendor_field": {"ü": [1, 2.5, None]}}
    client(gate, key).chat.completions.create(model="test-model", messages=MSGS, extra_body=vendor, **extra)  # type: ignore[call-overload]
    body = upstream_server.stats()["last_body"]
    for k, v in {**extra, **vendor}.items():
        assert body[k] == v
    assert body["messages"] == MSGS and body["model"] == "test-model"
    client(gate, key).chat.completions.create(model="default", messages=MSGS)
    assert upstream_server.stats()["last_body"]["model"] == "test-model"  # the alias is rewritten


def test_every_response_has_request_id_and_ratelimit_headers(gate: GateServer, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    with httpx2.Client(base_url=gate.url) as h:
        responses = [
            h.post("/v1/chat/completions", json={"model": "default", "messages": MSGS}, headers=auth),
            h.post("/v1/chat/completions", json={"model": "nope", "messages": MSGS}, headers=auth),
            h.get("/v1/models"),
            h.get("/healthz"),
            h.get("/nowhere"),
            h.post("/v1/chat/completions", json={"messages": MSGS},
                   headers={**auth, "X-Request-Id": "caller-id-1"}),
        ]
    for r in responses:
        assert r.headers["x-request-id"]
        assert int(r.headers["x-ratelimit-limit-requests"]) > 0
        assert int(r.headers["x-ratelimit-remaining-requests"]) >= 0
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert r.status_code < 500
    assert responses[-1].headers["x-request-id"] == "caller-id-1"
    assert responses[0].headers["x-request-id"] != responses[1].headers["x-request-id"]
    assert responses[1].status_code == 404 and responses[1].json()["error"]["code"] == "model_not_found"
    assert responses[4].status_code == 404 and responses[4].json()["error"]["type"] == "invalid_request_error"


def test_auth_errors_map_to_openai_exceptions(gate: GateServer, key: str) -> None:
    store = open_key_store(gate.config["keys"])
    past = gate.mint(expires_at=time.time() + 1.5)
    other = gate.mint(endpoint="some-other-endpoint")
    revoked = gate.mint()
    with pytest.raises(openai.AuthenticationError):
        client(gate, "ws_live_" + "0" * 64).models.list()
    with pytest.raises(openai.AuthenticationError):
        client(gate, "sk-not-a-warmstart-key").chat.completions.create(model="default", messages=MSGS)
    missing = httpx2.get(f"{gate.base_url}/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(gate, other).chat.completions.create(model="default", messages=MSGS)
    assert e.value.code == "key_wrong_endpoint"
    client(gate, revoked).models.list()
    store.revoke(revoked)
    time.sleep(float(gate.config["key_cache_ttl_s"]) + 0.1)  # the revocation bound
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(gate, revoked).chat.completions.create(model="default", messages=MSGS)
    assert e.value.code == "key_revoked"
    time.sleep(1.6)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client(gate, past).chat.completions.create(model="default", messages=MSGS)
    assert e.value.code == "key_expired"
    store.close()
    assert key not in gate.log() and revoked not in gate.log() and other not in gate.log()


def test_model_not_found_is_openai_404(gate: GateServer, key: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(gate, key).chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(gate, key).models.retrieve("gpt-4o")


def test_rate_limit_retry_after_is_honoured_then_succeeds(gate: GateServer) -> None:
    key = gate.mint(rate_per_min=10)  # burst 10, then one every 6 s
    with httpx2.Client(base_url=gate.url, headers={"Authorization": f"Bearer {key}"}) as h:
        statuses: list[int] = []
        while 429 not in statuses and len(statuses) < 20:
            statuses.append(h.post("/v1/embeddings", json={"input": "a"}).status_code)
    assert statuses[:10] == [200] * 10 and statuses[-1] == 429  # a fresh key gets its burst, then waits
    rec = Recorder()
    r = client(gate, key, retries=2, http_client=rec.http).embeddings.create(model="default", input="a")
    assert r.data
    assert [s for _, s, _ in rec.seen] == [429, 200]
    t429, _, h429 = rec.seen[0]
    assert h429["x-ratelimit-remaining-requests"] == "0" and h429["x-ratelimit-limit-requests"] == "10"
    wait = int(h429["retry-after-ms"]) / 1000
    assert 0 < wait <= 6.0 and int(h429["retry-after"]) >= wait
    assert rec.seen[1][0] - t429 >= wait  # the client waited as told before retrying


def test_daily_cap_says_do_not_retry(gate: GateServer) -> None:
    key = gate.mint(daily_cap=2)
    c = client(gate, key)
    c.embeddings.create(model="default", input="a")
    c.embeddings.create(model="default", input="a")
    rec = Recorder()
    with pytest.raises(openai.RateLimitError) as e:
        client(gate, key, retries=3, http_client=rec.http).embeddings.create(model="default", input="a")
    assert e.value.code == "daily_cap_exceeded"
    assert len(rec.seen) == 1  # x-should-retry: false stopped the client's retries
    h = rec.seen[0][2]
    assert h["x-should-retry"] == "false" and h["x-ratelimit-limit-requests"] == "2"
    assert h["x-ratelimit-remaining-requests"] == "0"


def test_playground_keys_get_the_plan_daily_cap(gate: GateServer) -> None:
    key = gate.mint(kind="playground", plan="starter")
    with httpx2.Client(base_url=gate.url, headers={"Authorization": f"Bearer {key}"}) as h:
        r = h.post("/v1/embeddings", json={"model": "default", "input": "a"})
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-requests"] == "100"
    assert r.headers["x-ratelimit-remaining-requests"] == "99"


def test_over_budget_429_only_after_the_client_honoured_retry_after(
    tmp_path: Path, upstream_server: UpstreamProcess, redis_url: str
) -> None:
    g = GateServer(tmp_path, gate_config([upstream_server.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                         replica_cap=1), workers=2)
    try:
        key = g.mint()
        hog = client(g, key).chat.completions.create(
            model="default", messages=MSGS, stream=True, extra_body={"ws_test": {"tokens": 400, "interval_ms": 25}})
        next(iter(hog))  # the only slot is taken for ~10 s
        rec = Recorder()
        with pytest.raises(openai.RateLimitError) as e:
            client(g, key, retries=2, http_client=rec.http).chat.completions.create(model="default", messages=MSGS)
        assert e.value.code == "concurrency_limit_exceeded"
        assert [s for _, s, _ in rec.seen] == [429, 429, 429]  # first try + 2 retries
        for (t0, _, h), (t1, _, _) in zip(rec.seen, rec.seen[1:], strict=False):
            wait = int(h["retry-after-ms"]) / 1000
            assert 0 < wait <= 120 and int(h["retry-after"]) >= wait
            assert t1 - t0 >= wait
        hog.close()
    finally:
        g.stop()


def test_stopped_endpoint_is_503_with_retry_after(tmp_path: Path, upstream_server: UpstreamProcess) -> None:
    g = GateServer(tmp_path, gate_config([upstream_server.url], f"sqlite:{tmp_path / 'k.db'}", stopped=True))
    try:
        rec = Recorder()
        with pytest.raises(openai.InternalServerError) as e:
            client(g, g.mint(), retries=2, http_client=rec.http).chat.completions.create(model="default", messages=MSGS)
        assert e.value.status_code == 503 and e.value.code == "endpoint_stopped"
        assert len(rec.seen) == 1 and int(rec.seen[0][2]["retry-after"]) > 0
    finally:
        g.stop()


def test_upstream_failures_are_502_504_and_stream_errors(tmp_path: Path, upstream_server: UpstreamProcess) -> None:
    from tests.support.net import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    g = GateServer(tmp_path, gate_config([dead], f"sqlite:{tmp_path / 'k.db'}"))
    slow = GateServer(tmp_path, gate_config([upstream_server.url], f"sqlite:{tmp_path / 'k.db'}",
                                            request_timeout_s=1))
    try:
        key = g.mint()
        with pytest.raises(openai.InternalServerError) as e:
            client(g, key).chat.completions.create(model="default", messages=MSGS)
        assert e.value.status_code == 502 and e.value.code == "upstream_error"
        key = slow.mint()
        with pytest.raises(openai.InternalServerError) as e:
            client(slow, key).chat.completions.create(model="default", messages=MSGS,
                                                      extra_body={"ws_test": {"first_token_ms": 3000}})
        assert e.value.status_code == 504
        stream = client(slow, key).chat.completions.create(
            model="default", messages=MSGS, stream=True, extra_body={"ws_test": {"tokens": 10, "die_after": 3}})
        got = []
        with pytest.raises(openai.APIError) as err:
            for ch in stream:
                got.append(ch.choices[0].delta.content)
        assert got == ["tok0 ", "tok1 ", "tok2 "]
        assert "model server failed" in str(err.value)
        assert upstream_server.stats()["died"] >= 1
        assert slow.metric("ws_in_flight") == 0
    finally:
        g.stop()
        slow.stop()


def test_metrics_names(gate: GateServer, key: str) -> None:
    client(gate, key).chat.completions.create(model="default", messages=MSGS, stream=True,
                                              stream_options={"include_usage": True})
    text = gate.metrics()
    for name in ("ws_requests_total", "ws_request_duration_seconds_bucket", "ws_time_to_first_token_seconds_bucket",
                 "ws_in_flight", "ws_queue_wait_seconds_bucket", "ws_tokens_total", "ws_rejections_total",
                 "ws_lease_leaks_total", "ws_replicas"):
        assert f"\n{name}" in text, name
    assert gate.metric("ws_tokens_total", direction="out") >= 16
    assert gate.metric("ws_replicas", state="ready") == 1
    assert gate.metric("ws_lease_leaks_total") == 0
    log = gate.access_log()
    streamed = [e for e in log if e.get("stream") and e["status"] == 200]
    assert streamed and all(e["key"].startswith("ws_live_") and "…" in e["key"] for e in streamed)
    assert {"request_id", "replica", "duration_ms", "ttft_ms", "tokens_out"} <= set(streamed[-1])
