"""Operational contracts of the gate: what its access log, metrics and headers tell operators,
and how it fails. The gate runs under real gunicorn in front of the deterministic upstream."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.gate.app import create_app
from runtime.gate.config import GateConfig
from runtime.gate.keys import KeyStoreUnavailable, open_key_store
from runtime.gate.store import MemoryStore
from runtime.pool.base import PoolSnapshot
from runtime.pool.static import StaticPool
from tests.support.gate_server import GateServer, gate_config
from tests.support.upstream import UpstreamProcess

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, upstream_server: UpstreamProcess) -> Iterator[GateServer]:
    d = tmp_path_factory.mktemp("gate-ops")
    server = GateServer(d, gate_config([upstream_server.url], f"sqlite:{d / 'keys.db'}"))
    yield server
    server.stop()


def test_every_access_line_names_the_endpoint(gate: GateServer) -> None:
    # CloudWatch metric filters take their Endpoint dimension from this field.
    key = gate.mint()
    c = openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=0)
    c.chat.completions.create(model="default", messages=MSGS, extra_body={"ws_test": {"tokens": 2}})
    list(c.chat.completions.create(model="default", messages=MSGS, stream=True,
                                   extra_body={"ws_test": {"tokens": 2}}))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gate.base_url, api_key="ws_live_" + "0" * 64,
                      max_retries=0).models.list()
    lines = gate.access_log()
    assert len(lines) >= 3
    assert {line.get("endpoint") for line in lines} == {gate.endpoint}


# -- key store failures (in-process: the test decides when the store fails) --------------------

class FailingKeys:
    """The real sqlite key store, made to fail on demand the way a store fails: an outage
    (KeyStoreUnavailable, what the real stores raise for one) or a plain bug."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail: BaseException | None = None

    def get(self, key_hash: str) -> Any:
        if self.fail is not None:
            raise self.fail
        return self.inner.get(key_hash)


@pytest.fixture()
def inproc(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[tuple[Any, FailingKeys, str, io.StringIO]]:
    cfg = GateConfig.parse(gate_config([upstream.url], f"sqlite:{tmp_path / 'keys.db'}"))
    raw = open_key_store(cfg.keys)
    key, _ = raw.create(endpoint=cfg.endpoint)
    keys = FailingKeys(raw)
    app = create_app(cfg, store=MemoryStore(), keys=keys)  # type: ignore[arg-type]
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("warmstart.gate").addHandler(handler)
    try:
        yield app.test_client(), keys, key, log
    finally:
        logging.getLogger("warmstart.gate").removeHandler(handler)


def test_key_store_outage_is_503_with_retry_after(inproc: tuple[Any, FailingKeys, str, io.StringIO]) -> None:
    client, keys, key, _ = inproc
    keys.fail = KeyStoreUnavailable("keys=sqlite:x: database is locked")
    r = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.get_json()["error"]["code"] == "key_store_unavailable"
    keys.fail = None
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_bug_in_the_key_store_is_a_500_with_the_request_id(
        inproc: tuple[Any, FailingKeys, str, io.StringIO]) -> None:
    client, keys, key, log = inproc
    keys.fail = RuntimeError("boom: a programming error")
    r = client.post("/v1/chat/completions", json={"model": "default", "messages": MSGS},
                    headers={"Authorization": f"Bearer {key}", "X-Request-Id": "rid-bug-1"})
    assert r.status_code == 500 and r.headers["X-Request-Id"] == "rid-bug-1"
    err = r.get_json()["error"]
    assert err["code"] == "internal_error" and "rid-bug-1" in err["message"]
    assert "Traceback" not in r.get_data(as_text=True) and "boom" not in r.get_data(as_text=True)
    text = log.getvalue()
    assert "Traceback" in text and "boom: a programming error" in text and "rid-bug-1" in text


# -- what monitoring sees -----------------------------------------------------------------------

class ZeroablePool(StaticPool):
    """The upstream as one replica, until the test scales it to zero (optionally with replicas
    `starting`, so the gate holds requests the way it does while a real pool scales up)."""

    def __init__(self, url: str) -> None:
        super().__init__([url], cap=4)
        self.zero = False
        self.starting = 0

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(starting=self.starting) if self.zero else super().snapshot()


@pytest.fixture()
def zgate(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[tuple[Any, ZeroablePool, Any]]:
    cfg = GateConfig.parse(gate_config([upstream.url], f"sqlite:{tmp_path / 'keys.db'}",
                                       keepalive_interval_s=0.2, hold_timeout_s=30))
    raw = open_key_store(cfg.keys)
    pool = ZeroablePool(upstream.url)
    app = create_app(cfg, pool=pool, store=MemoryStore(), keys=raw)
    yield app.test_client(), pool, raw
    pool.zero = False


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.partition("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_replica_gauge_follows_the_pool_without_traffic(zgate: tuple[Any, ZeroablePool, Any]) -> None:
    client, pool, _ = zgate
    assert client.get("/healthz").status_code == 200
    assert _sample(client.get("/metrics").get_data(as_text=True), "ws_replicas", state="ready") == 1
    pool.zero = True  # scaled to zero while nobody calls: the scrape itself must notice
    text = client.get("/metrics").get_data(as_text=True)
    assert _sample(text, "ws_replicas", state="ready") == 0
    pool.starting = 2
    client.get("/healthz")
    assert _sample(client.get("/metrics").get_data(as_text=True), "ws_replicas", state="starting") == 2


def test_ratelimit_headers_describe_the_key_on_every_authenticated_response(
        zgate: tuple[Any, ZeroablePool, Any]) -> None:
    client, pool, raw = zgate
    endpoint = client.application.extensions["warmstart.gate"].config.endpoint
    capped, _ = raw.create(endpoint=endpoint, daily_cap=5)
    rated, _ = raw.create(endpoint=endpoint, rate_per_min=30)

    def get(key: str, path: str = "/v1/models") -> Any:
        return client.get(path, headers={"Authorization": f"Bearer {key}"})

    def limits(r: Any) -> tuple[str, str]:
        return r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-remaining-requests"]

    assert limits(get(capped)) == ("5", "5")  # free: describes the budget, spends nothing
    assert limits(get(rated, "/v1/models/default")) == ("30", "30")
    body = {"model": "default", "messages": MSGS, "ws_test": {"tokens": 1}}
    for key in (capped, rated):
        r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    assert limits(get(capped)) == ("5", "4") and limits(get(rated)) == ("30", "29")
    assert get(capped).headers["x-ratelimit-reset-requests"].endswith("s")

    pool.zero, pool.starting = True, 1  # replicas starting: a stream is held, its headers go out now
    r = client.post("/v1/chat/completions", json={**body, "stream": True},
                    headers={"Authorization": f"Bearer {rated}"}, buffered=False)
    try:
        assert r.status_code == 200 and r.mimetype == "text/event-stream"
        assert limits(r) == ("30", "29")  # the key's budget, not the concurrency budget ("0 of 0")
    finally:
        r.close()


def test_latency_buckets_resolve_llm_latencies(zgate: tuple[Any, ZeroablePool, Any]) -> None:
    client, _, raw = zgate
    key, _ = raw.create(endpoint=client.application.extensions["warmstart.gate"].config.endpoint)
    r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": "default", "messages": MSGS, "stream": True, "ws_test": {"tokens": 1}})
    assert r.status_code == 200 and b"[DONE]" in r.get_data()  # observes duration and TTFT
    text = client.get("/metrics").get_data(as_text=True)
    for name in ("ws_request_duration_seconds", "ws_time_to_first_token_seconds"):
        bounds = sorted({float(line.split('le="')[1].split('"')[0]) for line in text.splitlines()
                         if line.startswith(f"{name}_bucket") and 'le="+Inf"' not in line})
        assert bounds[0] <= 0.005 and bounds[-1] >= 120, (name, bounds)
        assert len([b for b in bounds if 1 < b < 2.5]) >= 2 and len([b for b in bounds if 10 < b < 30]) >= 2
        assert all(hi / lo <= 2.5 for lo, hi in zip(bounds[3:], bounds[4:], strict=False)), bounds
    assert max(float(line.split('le="')[1].split('"')[0]) for line in text.splitlines()
               if line.startswith("ws_request_duration_seconds_bucket") and 'le="+Inf"' not in line) >= 600


# -- gunicorn's own refusals ----------------------------------------------------------------------

def _raw(gate: GateServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
     431, "request_headers_too_large"),
    # just over gunicorn's 4094-byte limit, small enough to be read in one recv (unread bytes would
    # make the close an RST that can discard the answer before the test reads it)
    (b"GET /" + b"a" * 4200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long"),
])
def test_gunicorn_parser_refusals_are_openai_shaped(gate: GateServer, request_bytes: bytes, status: int,
                                                    code: str) -> None:
    got, headers, body = _raw(gate, request_bytes)
    assert got == status and headers["content-type"] == "application/json" and headers["x-request-id"]
    err = json.loads(body)["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]
    assert "<html" not in body.decode()
