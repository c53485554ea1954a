"""The gate under concurrency: exact budgets, disconnects, and a worker killed mid-stream.

Clients are raw asyncio sockets (cheap enough for 1,000 on two shared cores); the gate runs
under real gunicorn with the Redis store; the deterministic upstream counts what it saw. Streams
are made longer than the test so that nothing depends on timing: each test waits for a state
(counts), never for a duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from tests.support.gate_server import GateServer, gate_config
from tests.support.upstream import UpstreamProcess

pytestmark = pytest.mark.slow
ENDLESS = {"tokens": 5000, "interval_ms": 20}  # 100 s: outlives every test here


def request_bytes(key: str, ws_test: dict[str, float], stream: bool = True) -> bytes:
    body = json.dumps({"model": "default", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
                       "ws_test": ws_test}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + key.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Client:
    """One raw HTTP client: status, whether a token arrived, and an abort() for the test to pull."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.got_token = asyncio.Event()
        self.ended = asyncio.Event()  # EOF from the gate
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, req: bytes) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(req)
        try:
            while chunk := await reader.read(65536):
                self.body += chunk
                self.status = self.status or int(self.body[9:12])
                if b"data: " in chunk:
                    self.got_token.set()
        except ConnectionError:
            pass
        finally:
            self.ended.set()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # RST, like a killed client


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    asyncio.run(until(cond, timeout, what))


def streams_by_worker(gate: GateServer, pids: set[int]) -> dict[int, int]:
    """Client connections each gate worker holds (established, on the gate's listening port)."""
    return {
        pid: sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
                 if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == gate.port)
        for pid in pids
    }


def leases(gate: GateServer) -> int:
    r = redis.Redis.from_url(gate.config["store"], decode_responses=True)
    try:
        return int(r.zcard(f"{{ws:{gate.endpoint}}}:leases"))
    finally:
        r.close()


def replica_counts(gate: GateServer) -> dict[str, str]:
    r = redis.Redis.from_url(gate.config["store"], decode_responses=True)
    try:
        return {k: v for k, v in r.hgetall(f"{{ws:{gate.endpoint}}}:replicas").items() if v != "0"}
    finally:
        r.close()


def test_500_streams_against_a_budget_of_240(tmp_path: Path, upstream: UpstreamProcess, redis_url: str) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            plan="pro", replica_cap=240), workers=2)
    try:
        req = request_bytes(gate.mint(), ENDLESS)
        clients = [Client() for _ in range(500)]

        async def run() -> None:
            tasks = [asyncio.ensure_future(c.run(gate.port, req)) for c in clients]
            await until(lambda: sum(c.got_token.is_set() for c in clients) == 240
                        and sum(c.ended.is_set() for c in clients) == 260, 120, "240 streams and 260 refusals")
            # Nothing frees a slot (the streams outlive the test), so this is the steady state:
            assert upstream.stats()["active"] == 240
            for c in clients:
                c.abort()
            await asyncio.gather(*tasks)

        asyncio.run(run())
        refused = [c for c in clients if not c.got_token.is_set()]
        assert all(c.status == 429 and b"concurrency_limit_exceeded" in c.body and b"retry-after-ms" in c.body.lower()
                   for c in refused)
        assert all(c.status == 200 for c in clients if c.got_token.is_set())
        assert upstream.stats()["max_active"] == 240  # never more, at any moment
        wait_for(lambda: upstream.stats()["aborted"] == 240, 60, "the upstream to see 240 aborts")
        wait_for(lambda: leases(gate) == 0 and replica_counts(gate) == {}, 30, "leases to drain")
        assert gate.metric("ws_lease_leaks_total") == 0
        assert gate.metric("ws_rejections_total", status="429", reason="budget") == 260
    finally:
        gate.stop()


def test_1000_disconnects_mid_stream_and_before_first_token(
    tmp_path: Path, upstream: UpstreamProcess, redis_url: str
) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            plan="enterprise", replica_cap=1000), workers=2)
    try:
        key = gate.mint()
        mid = request_bytes(key, ENDLESS)
        early = request_bytes(key, {**ENDLESS, "first_token_ms": 100_000})
        streaming = [Client() for _ in range(500)]
        waiting = [Client() for _ in range(500)]

        async def upstream_stats() -> dict[str, int]:
            return await asyncio.get_running_loop().run_in_executor(None, upstream.stats)

        async def run() -> None:
            tasks = [asyncio.ensure_future(c.run(gate.port, mid)) for c in streaming]
            tasks += [asyncio.ensure_future(c.run(gate.port, early)) for c in waiting]
            requests = 0

            async def poll() -> None:
                nonlocal requests
                requests = (await upstream_stats())["requests"]

            deadline = time.monotonic() + 120
            while requests < 1000 or not all(c.got_token.is_set() for c in streaming):
                assert time.monotonic() < deadline, f"upstream saw {requests} requests"
                await poll()
                await asyncio.sleep(0.2)
            assert not any(c.got_token.is_set() or c.ended.is_set() for c in waiting)
            for c in streaming + waiting:  # half mid-stream, half before their first token
                c.abort()
            await asyncio.gather(*tasks)

        asyncio.run(run())
        wait_for(lambda: upstream.stats()["aborted"] == 1000, 60, "the upstream to see 1000 aborts")
        stats = upstream.stats()
        assert stats["requests"] == 1000 and stats["completed"] == 0 and stats["active"] == 0
        wait_for(lambda: leases(gate) == 0 and replica_counts(gate) == {}, 30, "leases to drain")
        assert gate.metric("ws_in_flight") == 0
        assert gate.metric("ws_lease_leaks_total") == 0
    finally:
        gate.stop()


def test_killed_worker_leaks_nothing_after_lease_expiry(
    tmp_path: Path, upstream: UpstreamProcess, redis_url: str
) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url,
                                            replica_cap=100, lease_ttl_s=3), workers=2)
    try:
        req = request_bytes(gate.mint(), ENDLESS)
        wait_for(lambda: len(gate.workers()) == 2, 30, "both workers")
        pids_before = set(gate.workers())
        clients = [Client() for _ in range(40)]

        async def run() -> int:
            tasks = [asyncio.ensure_future(c.run(gate.port, req)) for c in clients]
            await until(lambda: all(c.got_token.is_set() for c in clients), 60, "40 streams")
            # The kernel hands connections to whichever worker accepts first: the victim is the one
            # holding the most streams (either may hold all 40).
            held = streams_by_worker(gate, pids_before)
            victim = max(held, key=lambda pid: held[pid])
            assert sum(held.values()) == 40 and held[victim] >= 20, held
            os.kill(victim, signal.SIGKILL)
            await until(lambda: len(gate.workers()) == 2 and set(gate.workers()) != pids_before, 30,
                        "gunicorn to replace the worker")
            await asyncio.sleep(0.5)  # the victim's connections are reset by the kernel at once
            cut = sum(c.ended.is_set() for c in clients)
            # The survivors' 3 s leases stay alive (renewed), the victim's expire and are swept. (3 s, not 1:
            # a replacement worker booting on a busy 2-core machine must not starve the survivor's renewals.)
            await until(lambda: leases(gate) == 40 - cut, 30, "the victim's leases to expire")
            assert gate.metric("ws_lease_leaks_total") == cut
            for c in clients:
                c.abort()
            await asyncio.gather(*tasks)
            return cut

        cut = asyncio.run(run())
        assert cut > 0
        wait_for(lambda: leases(gate) == 0 and replica_counts(gate) == {}, 30, "every lease to be released")
        assert gate.metric("ws_lease_leaks_total") == cut  # the survivors released theirs: no new leak
    finally:
        gate.stop()


def test_a_caller_leaving_a_non_streamed_request_aborts_it_upstream(
    tmp_path: Path, upstream: UpstreamProcess, redis_url: str
) -> None:
    gate = GateServer(tmp_path, gate_config([upstream.url], f"sqlite:{tmp_path / 'k.db'}", store=redis_url))
    try:
        req = request_bytes(gate.mint(), ENDLESS, stream=False)
        clients = [Client() for _ in range(20)]

        async def run() -> None:
            tasks = [asyncio.ensure_future(c.run(gate.port, req)) for c in clients]
            await until(lambda: upstream.stats()["active"] == 20, 60, "20 requests upstream")
            for c in clients:
                c.abort()
            await asyncio.gather(*tasks)

        asyncio.run(run())
        wait_for(lambda: upstream.stats()["aborted"] == 20, 30, "the upstream to see 20 aborts")
        wait_for(lambda: leases(gate) == 0 and replica_counts(gate) == {}, 30, "leases to drain")
        assert upstream.stats()["completed"] == 0
    finally:
        gate.stop()
