"""The benchmark's load generator: C streaming clients against one OpenAI-compatible URL.

    python -m bench._load --url http://127.0.0.1:8080/v1 --key K --concurrency 64 --duration 10

Runs in its own process (asyncio + aiohttp, one event loop), so its CPU never counts as the
proxy's and its event loop never shares a GIL with the process being measured. Each client
keeps one keep-alive connection (as an SDK client does) and sends streamed chat completions
back to back until the time or request bound. Client i starts i/C of `--ramp` seconds late:
with streams of equal length, clients that all start together stay in lock-step and hit the
proxy as one burst every cycle (a closed-loop artifact no real traffic has), so the ramp is one
stream's length and arrivals stay spread evenly. Prints one JSON object on stdout:

    {"concurrency": C, "wall_s": ..., "requests": [[latency_s, ttft_s, events, status], ...]}

latency is send → end of stream, ttft is send → first `data:` event; a request that failed
(non-200, cut stream, timeout) has status != 200 and is counted as an error, never as a sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

Sample = tuple[float, float, int, int]


def _loopback_only(url: str) -> str:
    # The benchmark must never send load anywhere but this machine.
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise SystemExit(f"error: --url {url!r} is not on 127.0.0.1; the load generator only targets loopback")
    return url.rstrip("/")


async def one_request(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes,
                      timeout_s: float) -> Sample:
    t0 = time.perf_counter()
    ttft = -1.0
    events = 0
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, data=body, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    return (time.perf_counter() - t0, -1.0, 0, resp.status)
                done = False
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        if ttft < 0:
                            ttft = time.perf_counter() - t0
                        events += 1
                        if line.strip() == b"data: [DONE]":
                            done = True
                    elif line.startswith(b"event: error"):
                        return (time.perf_counter() - t0, ttft, events, 599)
                latency = time.perf_counter() - t0
                # A stream that ends without [DONE] was cut: an error, not a fast sample.
                return (latency, ttft, events, 200 if done else 598)
    except TimeoutError:
        return (time.perf_counter() - t0, ttft, events, 597)
    except (aiohttp.ClientError, OSError):
        return (time.perf_counter() - t0, ttft, events, 596)


async def run(url: str, key: str, model: str, concurrency: int, duration_s: float, max_requests: int,
              timeout_s: float, ramp_s: float = 0.0) -> dict[str, Any]:
    target = f"{url}/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps({
        "model": model, "stream": True, "max_tokens": 64,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Count to sixteen."}],
    }).encode()
    samples: list[Sample] = []
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=None)
    t_start = time.perf_counter()
    deadline = t_start + ramp_s + duration_s

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal issued
        await asyncio.sleep(ramp_s * i / concurrency)
        while time.perf_counter() < deadline and issued < max_requests:
            issued += 1
            samples.append(await one_request(session, target, headers, body, timeout_s))

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
    return {"concurrency": concurrency, "wall_s": time.perf_counter() - t_start,
            "requests": [list(s) for s in samples]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._load", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="OpenAI base URL on 127.0.0.1 (…/v1)")
    p.add_argument("--key", default="none")
    p.add_argument("--model", default="test-model")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, default=10.0, help="stop issuing after this many seconds")
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=60.0, help="bound on one request")
    p.add_argument("--ramp", type=float, default=0.0, help="spread the clients' first requests over this many s")
    a = p.parse_args(argv)
    if not 1 <= a.concurrency <= 4096:
        raise SystemExit(f"error: --concurrency {a.concurrency} is out of range; use 1..4096")
    result = asyncio.run(run(_loopback_only(a.url), a.key, a.model, a.concurrency, a.duration,
                             a.max_requests, a.timeout, a.ramp))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
