"""Parsing the gate's Prometheus text: real exposition produced by a real prometheus_client registry
with the gate's metric names, read back through warmstart.monitoring.parse."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from warmstart.errors import OperationError
from warmstart.monitoring.parse import Histogram as H
from warmstart.monitoring.parse import parse_metrics, summarize

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GateMetrics:
    """The gate's metric contract, declared the way the gate declares it."""

    def __init__(self, pid_label: bool = False) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ws_requests_total", "requests", ["route", "status"], registry=r)
        self.duration = Histogram("ws_request_duration_seconds", "latency", ["route"], buckets=BUCKETS, registry=r)
        self.ttft = Histogram("ws_time_to_first_token_seconds", "ttft", ["route"], buckets=BUCKETS, registry=r)
        self.queue = Histogram("ws_queue_wait_seconds", "queue wait", buckets=BUCKETS, registry=r)
        self.in_flight = Gauge("ws_in_flight", "in flight", registry=r)
        self.tokens = Counter("ws_tokens_total", "tokens", ["direction"], registry=r)
        self.rejections = Counter("ws_rejections_total", "rejections", ["status", "reason"], registry=r)
        self.leaks = Counter("ws_lease_leaks_total", "leaks", registry=r)
        labels = ["state", "pid"] if pid_label else ["state"]
        self.replicas = Gauge("ws_replicas", "replicas", labels, registry=r)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def test_counts_tokens_and_gauges_are_summed_over_labels() -> None:
    m = GateMetrics()
    for _ in range(7):
        m.requests.labels("/v1/chat/completions", "200").inc()
    m.requests.labels("/v1/completions", "200").inc(3)
    m.requests.labels("/v1/chat/completions", "429").inc(2)
    m.requests.labels("/v1/chat/completions", "503").inc()
    m.requests.labels("/v1/chat/completions", "502").inc()
    m.tokens.labels("in").inc(120)
    m.tokens.labels("out").inc(480)
    m.in_flight.set(4)
    m.rejections.labels("429", "daily_cap").inc(2)
    m.replicas.labels("ready").set(2)
    m.replicas.labels("starting").set(1)

    s = parse_metrics(m.text(), at=100.0)
    assert s.requests == 14
    assert s.requests_by_status == {"200": 10, "429": 2, "503": 1, "502": 1}
    assert (s.tokens_in, s.tokens_out, s.in_flight) == (120, 480, 4)
    assert (s.replicas_ready, s.replicas_starting) == (2, 1)
    assert s.rejections == {"429 daily_cap": 2}
    assert s.lease_leaks == 0

    summary = summarize(s)
    assert (summary.status_429, summary.status_503, summary.status_5xx) == (2, 1, 2)
    assert summary.window_s is None


def test_rejections_only_counter_still_gives_429s() -> None:
    m = GateMetrics()
    m.rejections.labels("429", "rate").inc(5)
    m.rejections.labels("503", "hold_timeout").inc(2)
    summary = summarize(parse_metrics(m.text()))
    assert (summary.status_429, summary.status_503) == (5, 2)


def test_percentiles_interpolate_like_histogram_quantile() -> None:
    m = GateMetrics()
    # 10 requests at 0.3 s (bucket 0.25..0.5) and 10 at 0.7 s (bucket 0.5..1.0), across two routes.
    for _ in range(10):
        m.duration.labels("/v1/chat/completions").observe(0.3)
        m.duration.labels("/v1/completions").observe(0.7)
    s = parse_metrics(m.text())
    assert s.request_duration.count == 20
    assert s.request_duration.sum == pytest.approx(10.0)
    # rank 10 of 20 is the top of the 0.25..0.5 bucket; rank 19.8 is 98% into 0.5..1.0.
    assert s.request_duration.quantile(0.5) == pytest.approx(0.5)
    assert s.request_duration.quantile(0.99) == pytest.approx(0.5 + 0.5 * 9.8 / 10)
    assert s.request_duration.quantile(0.25) == pytest.approx(0.25 + 0.25 * 5 / 10)


def test_quantile_in_the_inf_bucket_answers_the_highest_finite_bound() -> None:
    m = GateMetrics()
    for _ in range(3):
        m.ttft.labels("/v1/chat/completions").observe(42.0)
    s = parse_metrics(m.text())
    assert s.ttft.quantile(0.5) == 10.0
    assert H().quantile(0.5) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        s.ttft.quantile(1.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=9.9, allow_nan=False), min_size=1, max_size=80),
       st.sampled_from([0.5, 0.9, 0.99]))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float], q: float) -> None:
    m = GateMetrics()
    for v in values:
        m.queue.observe(v)
    est = parse_metrics(m.text()).queue_wait.quantile(q)
    assert est is not None
    ordered = sorted(values)
    true = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    bounds = (0.0, *BUCKETS)
    lo = max(b for b in bounds if b < true) if true > 0 else 0.0
    hi = min(b for b in BUCKETS if b >= true)
    assert lo - 1e-9 <= est <= hi + 1e-9


def test_a_window_between_two_scrapes_counts_only_what_happened_in_it() -> None:
    m = GateMetrics()
    for _ in range(50):
        m.duration.labels("/v1/chat/completions").observe(0.07)  # slow past
        m.requests.labels("/v1/chat/completions", "200").inc()
    m.tokens.labels("out").inc(1000)
    first = parse_metrics(m.text(), at=1000.0)
    for _ in range(10):
        m.duration.labels("/v1/chat/completions").observe(2.0)
        m.requests.labels("/v1/chat/completions", "200").inc()
    m.tokens.labels("out").inc(250)
    m.requests.labels("/v1/chat/completions", "429").inc(4)
    second = parse_metrics(m.text(), at=1010.0)

    w = summarize(second, first)
    assert w.window_s == pytest.approx(10.0)
    assert w.requests == 14
    assert w.requests_per_s == pytest.approx(1.4)
    assert w.tokens_out == 250
    assert w.tokens_per_s == pytest.approx(25.0)
    assert w.status_429 == 4
    # Only the ten 2 s requests are in the window: p50 sits in the 1.0..2.5 bucket, not at 70 ms.
    assert w.latency_p50_s is not None and 1.0 < w.latency_p50_s <= 2.5

    since_start = summarize(second)
    assert since_start.requests == 64
    assert since_start.latency_p50_s is not None and since_start.latency_p50_s <= 0.1


def test_a_gate_restart_between_scrapes_reports_the_new_counters() -> None:
    before = GateMetrics()
    before.requests.labels("/v1/chat/completions", "200").inc(100)
    after = GateMetrics()
    after.requests.labels("/v1/chat/completions", "200").inc(3)
    w = summarize(parse_metrics(after.text(), at=20.0), parse_metrics(before.text(), at=10.0))
    assert w.requests == 3
    assert w.window_s is None


def test_replica_gauges_from_several_workers_are_not_added_up() -> None:
    m = GateMetrics(pid_label=True)
    for pid in ("101", "102", "103"):
        m.replicas.labels("ready", pid).set(2)
        m.replicas.labels("starting", pid).set(0)
    m.replicas.labels("starting", "103").set(1)  # the worker that saw the newest pool snapshot
    s = parse_metrics(m.text())
    assert (s.replicas_ready, s.replicas_starting) == (2, 1)


def test_uptime_gives_rates_for_a_single_scrape() -> None:
    text = GateMetrics().text() + "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1000.0\n"
    s = parse_metrics(text, at=1100.0)
    assert s.started_at == 1000.0
    assert summarize(s).tokens_per_s == 0.0


def test_garbage_is_a_one_line_error() -> None:
    with pytest.raises(OperationError, match="not Prometheus text"):
        parse_metrics("ws_requests_total{status=\"200\" 12\n")


def test_only_model_traffic_counts_as_requests_and_latency() -> None:
    m = GateMetrics()
    for _ in range(50):  # scrapes, model lists and health checks: fast and frequent
        m.requests.labels("/metrics", "200").inc()
        m.requests.labels("/v1/models", "200").inc()
        m.duration.labels("/metrics").observe(0.001)
        m.duration.labels("/v1/models").observe(0.001)
    for _ in range(4):
        m.requests.labels("/v1/chat/completions", "200").inc()
        m.duration.labels("/v1/chat/completions").observe(2.0)
    m.tokens.labels("out").inc(80)
    s = summarize(parse_metrics(m.text()))
    assert s.requests == 4
    assert s.latency_p50_s is not None and s.latency_p50_s > 1.0
    assert s.stream_tokens_per_s == pytest.approx(80 / 8.0)
