"""The gate's Prometheus text (GET /metrics) as a typed scrape, and scrapes as a summary.

One scrape is cumulative since the gate started; two scrapes give a window (the difference of
their counters and histogram buckets), which is what `--watch` shows. Percentiles come from the
histogram buckets with the same linear interpolation as PromQL's histogram_quantile, so the
figures agree with a Prometheus or CloudWatch view of the same gate.

Metric names are the gate's contract (see runtime/gate): ws_requests_total{route,status},
ws_request_duration_seconds, ws_time_to_first_token_seconds, ws_queue_wait_seconds (histograms),
ws_in_flight, ws_tokens_total{direction}, ws_rejections_total{status,reason},
ws_lease_leaks_total, ws_replicas{state}.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from warmstart.errors import OperationError

__all__ = ["Histogram", "Scrape", "Summary", "parse_metrics", "scrape", "summarize"]


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts by upper bound, +Inf last (Prometheus' own layout)."""

    buckets: tuple[tuple[float, float], ...] = ()
    count: float = 0.0
    sum: float = 0.0

    def quantile(self, q: float) -> float | None:
        """PromQL histogram_quantile: interpolate linearly inside the bucket holding rank q*count.

        A rank in the +Inf bucket answers the highest finite bound (PromQL does the same): the
        buckets cannot say more, and the caller should widen them rather than trust a guess.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q={q} must be between 0 and 1")
        if not self.buckets or self.buckets[-1][1] <= 0:
            return None
        total = self.buckets[-1][1]
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, cum in self.buckets:
            if cum >= rank and cum > lower_count:
                if math.isinf(bound):
                    finite = [b for b, _ in self.buckets if not math.isinf(b)]
                    return finite[-1] if finite else None
                in_bucket = cum - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / in_bucket)
            lower_bound, lower_count = bound, cum
        return None

    def __sub__(self, earlier: Histogram) -> Histogram:
        """The observations made between two scrapes (a gate restart resets counters: keep the later)."""
        before = dict(earlier.buckets)
        if self.count < earlier.count:
            return self
        return Histogram(
            buckets=tuple((b, c - before.get(b, 0.0)) for b, c in self.buckets),
            count=self.count - earlier.count,
            sum=self.sum - earlier.sum,
        )

    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None


def _merge(parts: list[dict[float, float]]) -> tuple[tuple[float, float], ...]:
    merged: dict[float, float] = defaultdict(float)
    for part in parts:
        for bound, cum in part.items():
            merged[bound] += cum
    return tuple(sorted(merged.items()))


@dataclass(frozen=True)
class Scrape:
    """One read of the gate's /metrics, summed over routes, workers and label values."""

    at: float
    requests_by_status: dict[str, float] = field(default_factory=dict)
    request_duration: Histogram = Histogram()
    ttft: Histogram = Histogram()
    queue_wait: Histogram = Histogram()
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    in_flight: float = 0.0
    rejections: dict[str, float] = field(default_factory=dict)  # "429 daily_cap" -> count
    lease_leaks: float = 0.0
    replicas_ready: float = 0.0
    replicas_starting: float = 0.0
    started_at: float | None = None  # process_start_time_seconds, when the gate exports it

    @property
    def requests(self) -> float:
        return sum(self.requests_by_status.values())

    def status_count(self, status: str) -> float:
        """Responses with this status; the rejections counter covers a gate that counts them only there."""
        counted = self.requests_by_status.get(status, 0.0)
        rejected = sum(v for k, v in self.rejections.items() if k.split(" ", 1)[0] == status)
        return max(counted, rejected)


_HISTOGRAMS = {
    "ws_request_duration_seconds": "request_duration",
    "ws_time_to_first_token_seconds": "ttft",
    "ws_queue_wait_seconds": "queue_wait",
}


# Only model traffic counts as requests and latency: /metrics scrapes, health checks, the playground's
# assets and the free /v1/models would otherwise drown the percentiles in sub-millisecond answers.
INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


def _counted(labels: dict[str, str]) -> bool:
    route = labels.get("route")
    return route is None or route in INFERENCE_ROUTES


def parse_metrics(text: str, at: float | None = None) -> Scrape:
    """Parse Prometheus text exposition into a Scrape; unknown metrics and routes are ignored."""
    buckets: dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]] = defaultdict(dict)
    counts: dict[str, float] = defaultdict(float)
    sums: dict[str, float] = defaultdict(float)
    by_status: dict[str, float] = defaultdict(float)
    rejections: dict[str, float] = defaultdict(float)
    tokens = {"in": 0.0, "out": 0.0}
    in_flight = 0.0
    leaks = 0.0
    # Under gunicorn's multiprocess mode each worker may report the pool's replica gauge with its
    # own pid label; every worker sees the same pool, so take the largest, never the sum.
    replicas: dict[str, float] = defaultdict(float)
    started: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as e:
        raise OperationError(f"the /metrics response is not Prometheus text ({e})") from None
    for fam in families:
        for s in fam.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if not _counted(labels):
                continue
            if fam.name in _HISTOGRAMS:
                attr = _HISTOGRAMS[fam.name]
                series = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                if name.endswith("_bucket"):
                    buckets[attr].setdefault(series, {})[float(labels["le"])] = value
                elif name.endswith("_count"):
                    counts[attr] += value
                elif name.endswith("_sum"):
                    sums[attr] += value
            elif name == "ws_requests_total":
                by_status[labels.get("status", "?")] += value
            elif name == "ws_tokens_total":
                direction = labels.get("direction", "")
                if direction in tokens:
                    tokens[direction] += value
            elif name == "ws_in_flight":
                in_flight += value
            elif name == "ws_rejections_total":
                rejections[f"{labels.get('status', '?')} {labels.get('reason', '?')}"] += value
            elif name == "ws_lease_leaks_total":
                leaks += value
            elif name == "ws_replicas":
                state = labels.get("state", "")
                replicas[state] = max(replicas[state], value)
            elif name == "process_start_time_seconds":
                started = value if started is None else min(started, value)
    hists = {
        attr: Histogram(buckets=_merge(list(buckets[attr].values())), count=counts[attr], sum=sums[attr])
        for attr in _HISTOGRAMS.values()
    }
    return Scrape(
        at=time.time() if at is None else at,
        requests_by_status=dict(by_status),
        request_duration=hists["request_duration"],
        ttft=hists["ttft"],
        queue_wait=hists["queue_wait"],
        tokens_in=tokens["in"],
        tokens_out=tokens["out"],
        in_flight=in_flight,
        rejections=dict(rejections),
        lease_leaks=leaks,
        replicas_ready=replicas["ready"],
        replicas_starting=replicas["starting"],
        started_at=started,
    )


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    """GET <url>/metrics (url is the gate's base, with or without /metrics or /v1), with the
    replica counts taken live from /healthz when the gate answers it.

    The gate sets its ws_replicas gauge when a request arrives, so during idle (exactly when a Flex
    endpoint scales to zero) the gauge still shows the last request's pool; /healthz asks the
    pool now.
    """
    base = url.rstrip("/")
    base = base.removesuffix("/metrics").removesuffix("/v1")
    target = f"{base}/metrics"
    if not target.startswith(("http://", "https://")):
        raise OperationError(f"--url {url!r} is not an http(s) URL; use http://HOST:PORT")
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        raise OperationError(f"{target} answered HTTP {e.code}; is this a warmstart gate?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise OperationError(
            f"cannot read {target} ({reason}); start the endpoint (`make local`) or pass --url"
        ) from None
    result = parse_metrics(text)
    live = _healthz(f"{base}/healthz", timeout)
    if live is not None:
        result = replace(result, replicas_ready=live[0], replicas_starting=live[1])
    return result


def _healthz(url: str, timeout: float) -> tuple[float, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:  # 503 (store down) still reports the pool
        body = e.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        data = json.loads(body)
        ready, starting = data["ready"], data["starting"]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (ready, starting)):
        return None
    return float(ready), float(starting)


@dataclass(frozen=True)
class Summary:
    """What `warmstart endpoint metrics` shows. window_s is None for figures since the gate started."""

    source: str
    at: float
    window_s: float | None
    requests: float
    requests_per_s: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    queue_wait_p50_s: float | None
    queue_wait_p99_s: float | None
    tokens_in: float | None  # None: the source does not record it
    tokens_out: float
    tokens_per_s: float | None
    in_flight: float
    replicas_ready: float
    replicas_starting: float
    status_429: float
    status_503: float
    status_5xx: float | None
    lease_leaks: float | None
    stream_tokens_per_s: float | None = None  # output tokens per second of request time (per stream)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        d.update(self.extra)
        return d


def summarize(current: Scrape, previous: Scrape | None = None, source: str = "local") -> Summary:
    """Figures since the gate started (one scrape) or over the window between two scrapes."""
    restarted = previous is not None and current.requests < previous.requests
    if previous is not None and not restarted:
        window: float | None = max(current.at - previous.at, 1e-9)
        dur = current.request_duration - previous.request_duration
        ttft = current.ttft - previous.ttft
        qw = current.queue_wait - previous.queue_wait
        reqs = current.requests - previous.requests
        tok_in = current.tokens_in - previous.tokens_in
        tok_out = current.tokens_out - previous.tokens_out
        s429 = current.status_count("429") - previous.status_count("429")
        s503 = current.status_count("503") - previous.status_count("503")
        s5xx = _5xx(current) - _5xx(previous)
        span: float | None = window
    else:
        window = None
        dur, ttft, qw = current.request_duration, current.ttft, current.queue_wait
        reqs, tok_in, tok_out = current.requests, current.tokens_in, current.tokens_out
        s429, s503, s5xx = current.status_count("429"), current.status_count("503"), _5xx(current)
        span = current.at - current.started_at if current.started_at else None
    per_s = (lambda n: n / span) if span and span > 0 else (lambda n: None)
    return Summary(
        source=source,
        at=current.at,
        window_s=window,
        requests=reqs,
        requests_per_s=per_s(reqs),
        latency_p50_s=dur.quantile(0.5),
        latency_p99_s=dur.quantile(0.99),
        ttft_p50_s=ttft.quantile(0.5),
        ttft_p99_s=ttft.quantile(0.99),
        queue_wait_p50_s=qw.quantile(0.5),
        queue_wait_p99_s=qw.quantile(0.99),
        tokens_in=tok_in,
        tokens_out=tok_out,
        tokens_per_s=per_s(tok_out),
        in_flight=current.in_flight,
        replicas_ready=current.replicas_ready,
        replicas_starting=current.replicas_starting,
        status_429=s429,
        status_503=s503,
        status_5xx=s5xx,
        lease_leaks=current.lease_leaks,
        stream_tokens_per_s=tok_out / dur.sum if dur.sum > 0 else None,
    )


def _5xx(s: Scrape) -> float:
    return sum(v for k, v in s.requests_by_status.items() if k.startswith("5"))
