"""Real vLLM (the local model on the CPU) behind the real gate, called with the official client.

One vLLM server for the whole session (tests/support/vllm_server.py); the gate runs under
gunicorn with a static pool pointing at it.
"""

from __future__ import annotations

import openai
import pytest

from tests.support.gate_server import GateFactory
from tests.support.vllm_server import VllmServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PARIS = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture()
def client(vllm_server: VllmServer, gate_factory: GateFactory) -> openai.OpenAI:
    gate = gate_factory(upstreams=[vllm_server.url], served_name=vllm_server.served_name, hold_timeout_s=30)
    return openai.OpenAI(base_url=gate.base_url, api_key=gate.mint(), max_retries=0, timeout=120)


def test_chat_answers_paris(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    r = client.chat.completions.create(model=vllm_server.served_name, messages=PARIS, temperature=0, max_tokens=30)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.model == vllm_server.served_name
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_model_default_is_the_served_model(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    r = client.chat.completions.create(model="default", messages=PARIS, temperature=0, max_tokens=30)
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.model == vllm_server.served_name


def test_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default", messages=PARIS, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert "Paris" in text
    assert chunks > 3  # streamed token by token, not one blob
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


def test_completions_and_models(client: openai.OpenAI, vllm_server: VllmServer) -> None:
    models = [m.id for m in client.models.list()]
    assert vllm_server.served_name in models
    r = client.completions.create(model="default", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text
