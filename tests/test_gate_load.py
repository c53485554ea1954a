"""The gate under concurrency: exact budgets, disconnects, and a worker killed mid-stream.

Clients are raw asyncio sockets (cheap enough for 1,000 on two shared cores); the gate runs
under real gunicorn with the Redis store; the deterministic upstream counts what it saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from warmstart.testing.gate_server import GateServer, gate_config
from warmstart.testing.upstream import UpstreamProcess

pytestmark = pytest.mark.slow


def request_bytes(key: str, ws_test: dict[str, float]) -> bytes:
    body = json.dumps({"model": "default", "stream": True, "messages": [{"role": "user", "content": "hi"}],
                       "ws_test": ws_test}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + key.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def full_stream(port: int, req: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(req)
    data = await reader.read()  # Connection: close → until EOF
    writer.close()
    return int(data[9:12]), data


def complete(raw: bytes) -> bool:
    """A whole SSE response: the last event and the closing zero-length chunk."""
    return b"data: [DONE]\n\n" in raw and raw.endswith(b"\r\n0\r\n\r\n")


def wait_for(cond: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def leases(gate: GateServer) -> tuple[int, dict[str, str]]:
    r = redis.Redis.from_url(gate.config["store"], decode_responses=True)
    tag = f"{{ws:{gate.endpoint}}}"
    try:
        per = {k: v for k, v in r.hgetall(f"{tag}:replicas").items() if v != "0"}
        return int(r.zcard(f"{tag}:leases")), per
    finally:
        r.close()


def test_500_streams_against_a_budget_of_240(tmp_path: Path, upstream: UpstreamProcess, redis_url: str) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            plan="pro", replica_cap=240), workers=2)
    try:
        req = request_bytes(gate.mint(), {"tokens": 80, "interval_ms": 50})  # ~4 s per stream

        async def run() -> list[tuple[int, bytes]]:
            return await asyncio.gather(*(full_stream(gate.port, req) for _ in range(500)))

        results = asyncio.run(run())
        statuses = [s for s, _ in results]
        ok = [d for s, d in results if s == 200]
        stats = upstream.stats()
        assert stats["max_active"] == 240  # exactly the budget, never more, at any moment
        assert len(ok) >= 240 and statuses.count(200) + statuses.count(429) == 500
        assert all(complete(d) for d in ok)
        assert all(b"concurrency_limit_exceeded" in d and b"retry-after-ms" in d.lower()
                   for s, d in results if s == 429)
        wait_for(lambda: leases(gate) == (0, {}), 30, "leases to drain")
        assert gate.metric("ws_lease_leaks_total") == 0
        assert gate.metric("ws_rejections_total", status="429", reason="budget") == statuses.count(429)
    finally:
        gate.stop()


def test_1000_disconnects_mid_stream_and_before_first_token(
    tmp_path: Path, upstream: UpstreamProcess, redis_url: str
) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            plan="enterprise", replica_cap=1000), workers=2)
    try:
        key = gate.mint()
        mid = request_bytes(key, {"tokens": 300, "interval_ms": 20})
        early = request_bytes(key, {"tokens": 300, "interval_ms": 20, "first_token_ms": 8000})
        seen_all = asyncio.Event()

        async def after_first_token() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
            writer.write(mid)
            buf = b""
            while b"data: " not in buf:
                chunk = await reader.read(4096)
                if not chunk:
                    return False
                buf += chunk
            writer.transport.abort()  # RST, like a killed client
            return True

        async def before_first_token() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", gate.port)
            writer.write(early)
            await seen_all.wait()  # the upstream has every request: now leave, token-less
            got = reader._buffer  # type: ignore[attr-defined]
            writer.close()
            return b"data: " not in bytes(got)

        async def watch_upstream() -> None:
            while upstream.stats()["requests"] < 1000:
                await asyncio.sleep(0.2)
            seen_all.set()

        async def run() -> list[bool]:
            watcher = asyncio.get_running_loop().run_in_executor(None, lambda: asyncio.run(watch_upstream()))
            clients = [after_first_token() for _ in range(500)] + [before_first_token() for _ in range(500)]
            results = await asyncio.gather(*clients, asyncio.wait_for(_set_when(watcher, seen_all), 60))
            return list(results[:-1])

        assert all(asyncio.run(run()))
        wait_for(lambda: upstream.stats()["aborted"] == 1000, 60, "the upstream to see 1000 aborts")
        stats = upstream.stats()
        assert stats["requests"] == 1000 and stats["completed"] == 0 and stats["active"] == 0
        wait_for(lambda: leases(gate) == (0, {}), 30, "leases to drain")
        assert gate.metric("ws_in_flight") == 0
        assert gate.metric("ws_lease_leaks_total") == 0
    finally:
        gate.stop()


async def _set_when(fut: asyncio.Future[None], event: asyncio.Event) -> None:
    await fut
    event.set()


def test_killed_worker_leaks_nothing_after_lease_expiry(
    tmp_path: Path, upstream: UpstreamProcess, redis_url: str
) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            replica_cap=100, lease_ttl_s=1), workers=2)
    try:
        req = request_bytes(gate.mint(), {"tokens": 120, "interval_ms": 50})  # ~6 s streams
        wait_for(lambda: len(gate.workers()) == 2, 30, "both workers")
        pids_before = set(gate.workers())

        async def run() -> list[tuple[int, bytes]]:
            tasks = [asyncio.ensure_future(full_stream(gate.port, req)) for _ in range(40)]
            while upstream.stats()["active"] < 40:
                await asyncio.sleep(0.1)
            victim = sorted(pids_before)[0]
            os.kill(victim, signal.SIGKILL)
            return await asyncio.gather(*tasks)

        results = asyncio.run(run())
        cut = [d for s, d in results if not complete(d)]
        # The victim's streams died with it; any on the other worker finished, their 1 s leases
        # renewed for 6 s (a missed renewal would show up as an extra leak below).
        assert len(cut) > 0
        wait_for(lambda: leases(gate) == (0, {}), 20, "the dead worker's leases to expire")
        wait_for(lambda: gate.metric("ws_lease_leaks_total") == len(cut), 10, "leaks to be counted")
        assert len(set(gate.workers()) - pids_before) == 1  # gunicorn replaced the victim
    finally:
        gate.stop()
