"""Operational contracts of the gate: what its access log, metrics and headers tell operators,
and how it fails. The gate runs under real gunicorn in front of the deterministic upstream."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

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
