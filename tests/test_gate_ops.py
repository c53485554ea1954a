"""Operational contracts of the gate: what its access log, metrics and headers tell operators,
and how it fails. The gate runs under real gunicorn in front of the deterministic upstream."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from runtime.gate.app import create_app
from runtime.gate.config import GateConfig
from runtime.gate.keys import KeyStoreUnavailable, open_key_store
from runtime.gate.store import MemoryStore
from warmstart.testing.gate_server import GateServer, gate_config
from warmstart.testing.upstream import UpstreamProcess

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
