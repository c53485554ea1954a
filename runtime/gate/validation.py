"""Checks on request bodies before a lease is taken: what would otherwise reach vLLM as garbage,
or make it allocate absurd amounts, is refused here with a 400 naming the field.

Only the fields the gate relies on are checked (model, stream, the route's input, token limits);
everything else (tools, response_format, logprobs, n, ...) passes through unchanged for vLLM to
judge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.gate import errors

ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
MAX_N = 128


@dataclass(frozen=True)
class Parsed:
    path: str  # the route, forwarded as is
    body: bytes  # what goes upstream: the caller's bytes, re-encoded only when `model` is rewritten
    stream: bool
    model: str
    prompt_chars: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse(route: str, raw: bytes, served_name: str, max_tokens_limit: int) -> Parsed:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise errors.bad_request("We could not parse the JSON body of your request: it is not valid JSON.",
                                 code="invalid_json") from None
    if not isinstance(data, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")

    model = data.get("model", "default")
    if not isinstance(model, str):
        raise errors.bad_request(f"'model' must be a string, got {type(model).__name__}.", "model", "invalid_type")
    rewrite = "model" not in data or model == "default"
    if model not in ("default", served_name):
        raise errors.model_not_found(model[:200])

    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", "stream", "invalid_type")

    kind = ROUTES[route]
    if kind == "chat":
        msgs = data.get("messages")
        if msgs is None:
            raise errors.bad_request("'messages' is a required property.", "messages", "missing_required_parameter")
        if not isinstance(msgs, list) or not msgs:
            raise errors.bad_request("'messages' must be a non-empty array.", "messages", "invalid_type")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise errors.bad_request(f"'messages[{i}]' must be an object with a string 'role'.",
                                         f"messages[{i}]", "invalid_type")
        prompt_chars = len(raw)
    elif kind == "completions":
        prompt = data.get("prompt")
        if prompt is None:
            raise errors.bad_request("'prompt' is a required property.", "prompt", "missing_required_parameter")
        if not _prompt_ok(prompt):
            raise errors.bad_request("'prompt' must be a string, an array of strings, or token ids.",
                                     "prompt", "invalid_type")
        prompt_chars = len(raw)
    else:
        inp = data.get("input")
        if inp is None:
            raise errors.bad_request("'input' is a required property.", "input", "missing_required_parameter")
        if not _prompt_ok(inp) or inp == [] or inp == "":
            raise errors.bad_request("'input' must be a non-empty string, array of strings, or token ids.",
                                     "input", "invalid_type")
        if stream:
            raise errors.bad_request("Embeddings cannot be streamed.", "stream", "invalid_value")
        prompt_chars = len(raw)

    for field in ("max_tokens", "max_completion_tokens"):
        v = data.get(field)
        if v is None:
            continue
        if not _is_int(v):
            raise errors.bad_request(f"'{field}' must be an integer.", field, "invalid_type")
        if not 1 <= v <= max_tokens_limit:
            raise errors.bad_request(f"'{field}' must be between 1 and {max_tokens_limit}, got {v}.",
                                     field, "invalid_value")
    n = data.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= MAX_N):
        raise errors.bad_request(f"'n' must be an integer between 1 and {MAX_N}.", "n", "invalid_value")
    so = data.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise errors.bad_request("'stream_options' must be an object.", "stream_options", "invalid_type")

    if rewrite:
        data["model"] = served_name
        raw = json.dumps(data, ensure_ascii=False).encode()
    return Parsed(path=route, body=raw, stream=bool(stream), model=served_name, prompt_chars=prompt_chars)


def _prompt_ok(p: Any) -> bool:
    if isinstance(p, str):
        return True
    if isinstance(p, list):
        return all(isinstance(x, str) for x in p) or all(_is_int(x) for x in p) or all(
            isinstance(x, list) and all(_is_int(y) for y in x) for x in p)
    return False
