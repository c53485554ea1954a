"""A small deterministic OpenAI-compatible upstream: what the gate's tests and benchmarks talk to.

It speaks the part of vLLM's API the gate relays (chat/completions/embeddings/models, SSE streams)
and records what it saw: concurrent requests (`max_active`), streams aborted by the caller
(`aborted`), and the last request body (to check the gate passes bodies through unchanged).

Behaviour per request comes from the body's `ws_test` object (the openai client sends it with
`extra_body={"ws_test": {...}}`), falling back to the command-line defaults:

    tokens          how many tokens to produce (default --tokens)
    interval_ms     pause between tokens (default --interval-ms)
    first_token_ms  pause before the first token (default --first-token-ms)
    die_after       close the connection abruptly after this many streamed tokens
    status          answer with this HTTP status and an OpenAI error body instead

Run it: `python -m tests.support.upstream --port P [--tokens 16] [--interval-ms 5]`; the
`upstream` pytest fixture starts one per test session in a subprocess (gevent, like the gate).
Introspection: GET /_stats, POST /_reset.
"""

from __future__ import annotations

from gevent import monkey

if __name__ == "__main__":  # patch before anything imports socket/threading
    monkey.patch_all()

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.net import free_port, wait_for_port

StartResponse = Callable[..., Any]


@dataclass
class Stats:
    requests: int = 0
    active: int = 0
    max_active: int = 0
    completed: int = 0
    aborted: int = 0
    died: int = 0
    last_body: Any = None
    paths: dict[str, int] = field(default_factory=dict)

    def enter(self) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)


class Upstream:
    def __init__(self, model: str, tokens: int, interval_ms: float, first_token_ms: float) -> None:
        self.model = model
        self.defaults = {"tokens": tokens, "interval_ms": interval_ms, "first_token_ms": first_token_ms}
        self.stats = Stats()

    # -- WSGI ---------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/_stats":
            data = dict(self.stats.__dict__)
            return self._json(start_response, 200, data)
        if path == "/_reset" and method == "POST":
            self.stats = Stats()
            return self._json(start_response, 200, {"ok": True})
        if path in ("/health", "/healthz"):
            return self._json(start_response, 200, {"status": "ok"})
        if path == "/v1/models":
            return self._json(start_response, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "upstream"}]})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return self._error(start_response, 404, f"no route {method} {path}")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"null")
        except (ValueError, KeyError):
            return self._error(start_response, 400, "body is not JSON")
        if not isinstance(body, dict):
            return self._error(start_response, 400, "body must be a JSON object")
        self.stats.requests += 1
        self.stats.last_body = body
        self.stats.paths[path] = self.stats.paths.get(path, 0) + 1
        if body.get("model") != self.model:
            return self._error(start_response, 404, f"The model `{body.get('model')}` does not exist.")
        try:
            opts = self._options(body.get("ws_test"))
        except (TypeError, ValueError):
            return self._error(start_response, 400, "ws_test must be an object of numbers")
        if "status" in opts:
            return self._error(start_response, int(opts["status"]), "upstream asked to fail")
        if path == "/v1/embeddings":
            return self._embeddings(start_response, body)
        if body.get("stream"):
            start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            return self._stream(path, body, opts, environ.get("ws.socket"))
        return self._complete(start_response, path, body, opts, environ.get("ws.socket"))

    def _options(self, given: Any) -> dict[str, Any]:
        opts: dict[str, Any] = dict(self.defaults)
        if given is None:
            return opts
        if not isinstance(given, dict):
            raise TypeError("ws_test")
        for k in ("tokens", "interval_ms", "first_token_ms", "die_after", "status"):
            if k in given:
                v = float(given[k])
                if not 0 <= v <= 100_000:
                    raise ValueError(k)
                opts[k] = v
        if "status" in opts and not 100 <= opts["status"] <= 599:
            raise ValueError("status")
        return opts

    # -- responses ----------------------------------------------------------------------------
    @staticmethod
    def _json(start_response: StartResponse, status: int, data: Any) -> list[bytes]:
        raw = json.dumps(data).encode()
        start_response(f"{status} X", [("Content-Type", "application/json"), ("Content-Length", str(len(raw)))])
        return [raw]

    def _error(self, start_response: StartResponse, status: int, msg: str) -> list[bytes]:
        return self._json(start_response, status, {"error": {
            "message": msg, "type": "invalid_request_error", "param": None, "code": None}})

    @staticmethod
    def _prompt_tokens(body: dict[str, Any]) -> int:
        return max(1, len(json.dumps(body.get("messages", body.get("prompt", ""))).split()))

    def _complete(self, start_response: StartResponse, path: str, body: dict[str, Any],
                  opts: dict[str, Any], sock: socket.socket | None = None) -> list[bytes]:
        n = int(opts["tokens"])
        self.stats.enter()
        try:
            left = self._caller_left(sock, (float(opts["first_token_ms"]) + n * float(opts["interval_ms"])) / 1000)
        finally:
            self.stats.active -= 1
        if left:
            self.stats.aborted += 1
            start_response("499 Client Closed Request", [("Content-Length", "0")])
            return []
        text = " ".join(f"tok{i}" for i in range(n))
        usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": n,
                 "total_tokens": self._prompt_tokens(body) + n}
        if path == "/v1/chat/completions":
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "length", "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            obj = "text_completion"
        self.stats.completed += 1
        return self._json(start_response, 200, {"id": "cmpl-test", "object": obj, "created": 0,
                                                "model": self.model, "choices": [choice], "usage": usage})

    def _embeddings(self, start_response: StartResponse, body: dict[str, Any]) -> list[bytes]:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i,
                 "embedding": [((len(str(x)) + k) % 7) / 7 for k in range(8)]} for i, x in enumerate(items)]
        self.stats.completed += 1
        return self._json(start_response, 200, {"object": "list", "data": data, "model": self.model,
                                                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})

    @staticmethod
    def _caller_left(sock: socket.socket | None, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the caller closes its connection (like vLLM, which
        aborts a request whose client disconnects, even before its first token)."""
        if sock is None:
            time.sleep(seconds)
            return False
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                return False
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
            time.sleep(left)  # pipelined bytes, not a close: just wait out the pause
        return False

    def _stream(self, path: str, body: dict[str, Any], opts: dict[str, Any],
                sock: socket.socket | None = None) -> Iterator[bytes]:
        n, interval = int(opts["tokens"]), float(opts["interval_ms"]) / 1000
        die_after = opts.get("die_after")
        chat = path == "/v1/chat/completions"
        self.stats.enter()
        done = False
        try:
            if self._caller_left(sock, float(opts["first_token_ms"]) / 1000):
                return
            for i in range(n):
                if die_after is not None and i >= int(die_after):
                    self.stats.died += 1
                    done = True
                    # An exception after the headers makes the WSGI server drop the connection
                    # without the closing chunk: what a crashing engine looks like on the wire.
                    raise ConnectionAbortedError("upstream asked to die mid-stream")
                if chat:
                    delta: dict[str, Any] = {"content": f"tok{i} "}
                    if i == 0:
                        delta["role"] = "assistant"
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None}
                    obj = "text_completion"
                chunk = {"id": "cmpl-test", "object": obj, "created": 0, "model": self.model,
                         "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if interval:
                    time.sleep(interval)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": self._prompt_tokens(body), "completion_tokens": n,
                         "total_tokens": self._prompt_tokens(body) + n}
                yield f"data: {json.dumps({'id': 'cmpl-test', 'object': 'chat.completion.chunk', 'created': 0, 'model': self.model, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            done = True
            self.stats.completed += 1
        finally:
            self.stats.active -= 1
            if not done:
                self.stats.aborted += 1


def serve(port: int, upstream: Upstream, host: str = "127.0.0.1") -> None:
    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class NoDelay(WSGIHandler):
        # Without TCP_NODELAY, a small token chunk waits for the peer's delayed ACK (~40 ms).
        def __init__(self, sock: socket.socket, *args: Any, **kw: Any) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().__init__(sock, *args, **kw)

        def get_environ(self) -> dict[str, Any]:
            env: dict[str, Any] = super().get_environ()
            env["ws.socket"] = self.socket  # lets a request notice its caller leaving before a write
            return env

    # A stream dropped on purpose (die_after) or by a caller is expected: no traceback for it.
    gevent.get_hub().NOT_ERROR += (ConnectionAbortedError, ConnectionResetError, BrokenPipeError)
    server = WSGIServer((host, port), upstream, spawn=Pool(20000), log=None, error_log=None, backlog=4096,
                        handler_class=NoDelay)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.support.upstream", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="test-model")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--first-token-ms", type=float, default=0.0)
    a = p.parse_args(argv)
    serve(a.port, Upstream(a.model, a.tokens, a.interval_ms, a.first_token_ms), a.host)


# -- pytest fixture -----------------------------------------------------------------------------


class UpstreamProcess:
    """The upstream in its own (gevent) process, on a free port."""

    def __init__(self, model: str = "test-model", tokens: int = 16, interval_ms: float = 5.0) -> None:
        self.port = free_port()
        self.model = model
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upstream", "--port", str(self.port), "--model", model,
             "--tokens", str(tokens), "--interval-ms", str(interval_ms)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/_reset", method="POST"), timeout=10).close()

    def stop(self) -> None:
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[UpstreamProcess]:
    proc = UpstreamProcess()
    yield proc
    proc.stop()


@pytest.fixture()
def upstream(upstream_server: UpstreamProcess) -> UpstreamProcess:
    """The session's upstream with its counters reset."""
    upstream_server.reset()
    return upstream_server


if __name__ == "__main__":
    main()
