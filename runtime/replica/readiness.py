"""When a replica may take traffic, and how it leaves.

Ready means a one-token completion succeeded: vLLM's /health answers as soon as the HTTP server
is up, before the first request has gone through the tokenizer, scheduler and model, and a
request routed then would pay that warm-up (or fail). Leaving means: stop being routable first
(deregister), let running streams finish (drain, bounded), then stop the process.

Used by the local pool (runtime/pool/local.py) and, on a GPU instance, by
`python -m runtime.replica.readiness --url http://ADDR:PORT --served-name NAME --ready-file F`,
which blocks until the replica is warm and then writes F (the launch lifecycle hook waits on it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# vLLM's Prometheus gauges of requests it holds (running on the engine, or queued for it).
_INFLIGHT_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class NotReady(Exception):
    """The replica did not become ready (its process exited, or the bound passed)."""


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), b""


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    try:
        status, _ = _get(f"{base_url}/health", timeout)
    except OSError:
        return False
    return status == 200


def warm_up(base_url: str, served_name: str, timeout: float = 60.0) -> float:
    """One greedy token through the real request path; returns its latency in seconds."""
    body = json.dumps(
        {"model": served_name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    ).encode()
    req = urllib.request.Request(
        f"{base_url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read())
    if not data.get("choices"):
        raise NotReady(f"warm-up completion at {base_url} returned no choices: {data}")
    return time.monotonic() - t0


def wait_ready(
    base_url: str,
    served_name: str,
    *,
    timeout: float = 600.0,
    alive: Callable[[], bool] = lambda: True,
    poll_s: float = 0.1,
) -> float:
    """Block until /health answers and a one-token warm-up succeeds; returns the warm-up time.

    alive: False once the replica's process has exited (then NotReady at once, not at timeout).
    """
    deadline = time.monotonic() + timeout
    while not healthy(base_url):
        if not alive():
            raise NotReady(f"replica at {base_url} exited before it was healthy")
        if time.monotonic() > deadline:
            raise NotReady(f"replica at {base_url} not healthy after {timeout:.0f}s")
        time.sleep(poll_s)
    while True:
        try:
            return warm_up(base_url, served_name, timeout=max(1.0, deadline - time.monotonic()))
        except (OSError, ValueError) as e:
            if not alive() or time.monotonic() > deadline:
                raise NotReady(f"warm-up completion at {base_url} failed: {e}") from None
            time.sleep(poll_s)


def in_flight(base_url: str, timeout: float = 2.0) -> int | None:
    """Requests the replica is running or queueing, from vLLM's /metrics; None if unreachable."""
    try:
        status, body = _get(f"{base_url}/metrics", timeout)
    except OSError:
        return None
    if status != 200:
        return None
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(_INFLIGHT_METRICS):
            try:
                total += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return int(total)


def drain(base_url: str, *, timeout: float, poll_s: float = 0.2) -> bool:
    """Wait until the replica holds no request (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        n = in_flight(base_url)
        if n is None or n == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Wait until a vLLM replica answers a one-token completion.")
    ap.add_argument("--url", required=True, help="the replica's base URL, e.g. http://10.0.3.7:8000")
    ap.add_argument("--served-name", required=True)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--ready-file", type=Path, help="written (with the warm-up latency) once ready")
    a = ap.parse_args(argv)
    try:
        latency = wait_ready(a.url.rstrip("/"), a.served_name, timeout=a.timeout)
    except NotReady as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.ready_file:
        a.ready_file.write_text(f"ready warm_up_s={latency:.3f}\n")
    print(f"ready: {a.url} (warm-up {latency:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
