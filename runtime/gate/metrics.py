"""Prometheus metrics of the gate. The names are a contract (the monitoring component parses them).

Under gunicorn every worker is a process: with PROMETHEUS_MULTIPROC_DIR set (gunicorn_conf.py sets
it before the workers start) prometheus_client writes each value to a per-process mmap file and
/metrics aggregates them; ws_in_flight sums live processes only, so a dead worker's gauge vanishes.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# LLM latencies spread over five decades (a cached embedding in ms, a long generation in minutes)
# and the SLOs that matter sit inside them (TTFT ~0.5-3 s, streams 5-60 s): ~1.5x spacing keeps
# every histogram_quantile within ~25 % anywhere in 5 ms .. 10 min.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12,
            16, 24, 32, 45, 60, 90, 120, 180, 300, 450, 600)
_TTFT = _LATENCY[:26]  # .. 120 s: a first token later than that is a timeout, not a latency
_WAIT = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("ws_requests_total", "Requests answered, by route and HTTP status", ["route", "status"])
DURATION = Histogram("ws_request_duration_seconds", "Request duration (to the last byte)", ["route"],
                     buckets=_LATENCY)
TTFT = Histogram("ws_time_to_first_token_seconds", "Time to the first relayed token", ["route"], buckets=_TTFT)
IN_FLIGHT = Gauge("ws_in_flight", "Admitted requests holding a lease", multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("ws_queue_wait_seconds", "Time held waiting for capacity before admission",
                       buckets=_WAIT)
TOKENS = Counter("ws_tokens_total", "Tokens in (prompt) and out (completion), from usage", ["direction"])
REJECTIONS = Counter("ws_rejections_total", "Requests refused, by status and reason", ["status", "reason"])
LEASE_LEAKS = Counter("ws_lease_leaks_total", "Leases that expired without being released (should stay 0)")
REPLICAS = Gauge("ws_replicas", "Replicas by state, as the pool reports them", ["state"],
                 multiprocess_mode="livemostrecent")


def child(metric: Counter | Histogram, *labels: str) -> Any:
    """metric.labels(*labels), memoised: the lookup (argument checks, a lock, a dict) costs more than
    the observation itself, and the gate makes several per request with a handful of label sets."""
    key = (id(metric), labels)
    c = _CHILDREN.get(key)
    if c is None:
        c = _CHILDREN.setdefault(key, metric.labels(*labels))
    return c


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def set_replicas(ready: int, starting: int) -> None:
    REPLICAS.labels("ready").set(ready)
    REPLICAS.labels("starting").set(starting)


def render() -> tuple[bytes, str]:
    """The exposition text: aggregated across gunicorn workers when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
