"""The same summary as the local /metrics view, read from CloudWatch (GetMetricData) for a stack.

On AWS the gates publish their figures to CloudWatch (namespace warmstart.naming.METRIC_NAMESPACE,
dimension Endpoint=<endpoint name>), and the Monitoring component's dashboard charts the same
metric names. They are listed once here, in METRICS, so the dashboard, the alarms and this reader
agree on them.

One GetMetricData call per sample: counters and percentiles over the whole window (one period the
size of the window, so CloudWatch computes the percentile over every observation rather than us
averaging per-minute percentiles), gauges as their most recent minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from warmstart import naming
from warmstart.errors import OperationError
from warmstart.monitoring.parse import Summary

__all__ = ["DIMENSION", "METRICS", "CloudWatchMetric", "read_summary", "dimension_value"]

DIMENSION = "Endpoint"


@dataclass(frozen=True)
class CloudWatchMetric:
    name: str
    stat: str
    kind: Literal["window", "latest"]


# summary field -> what CloudWatch holds for it
METRICS: dict[str, CloudWatchMetric] = {
    "requests": CloudWatchMetric("Requests", "Sum", "window"),
    "latency_p50_s": CloudWatchMetric("RequestLatency", "p50", "window"),
    "latency_p99_s": CloudWatchMetric("RequestLatency", "p99", "window"),
    "ttft_p50_s": CloudWatchMetric("TimeToFirstToken", "p50", "window"),
    "ttft_p99_s": CloudWatchMetric("TimeToFirstToken", "p99", "window"),
    "queue_wait_p50_s": CloudWatchMetric("QueueWait", "p50", "window"),
    "queue_wait_p99_s": CloudWatchMetric("QueueWait", "p99", "window"),
    "tokens_in": CloudWatchMetric("TokensIn", "Sum", "window"),
    "tokens_out": CloudWatchMetric("TokensOut", "Sum", "window"),
    "status_429": CloudWatchMetric("Rejected429", "Sum", "window"),
    "status_503": CloudWatchMetric("Rejected503", "Sum", "window"),
    "status_5xx": CloudWatchMetric("Errors5xx", "Sum", "window"),
    "lease_leaks": CloudWatchMetric("LeaseLeaks", "Sum", "window"),
    "in_flight": CloudWatchMetric("InFlight", "Average", "latest"),
    "replicas_ready": CloudWatchMetric("ReadyReplicas", "Average", "latest"),
    "replicas_starting": CloudWatchMetric("ReplicasStarting", "Average", "latest"),
}


def dimension_value(environment: str, endpoint: str) -> str:
    # The AWS replica pool (runtime/pool/aws.py) publishes InFlight/ReadyReplicas with
    # Endpoint=<the gate config's endpoint id>, which is the endpoint's name.
    return endpoint


def _window_period(window_s: float) -> int:
    # GetMetricData wants periods in whole minutes for standard-resolution metrics.
    return max(60, int(math.ceil(window_s / 60.0)) * 60)


def read_summary(
    cloudwatch: Any,
    *,
    environment: str,
    endpoint: str,
    window_s: float = 900.0,
    now: datetime | None = None,
) -> Summary:
    """Figures for the last window_s seconds (a missing metric reads as 0 for counts, None for times)."""
    if window_s < 60:
        raise OperationError(f"window={window_s:g}s is shorter than CloudWatch's 60 s resolution; use >= 60")
    end = (now or datetime.now(UTC)).replace(microsecond=0)
    period = _window_period(window_s)
    start = end - timedelta(seconds=period)
    dims = [{"Name": DIMENSION, "Value": dimension_value(environment, endpoint)}]
    queries = []
    for i, (field, m) in enumerate(METRICS.items()):
        queries.append({
            "Id": f"m{i}",
            "Label": field,
            "MetricStat": {
                "Metric": {"Namespace": naming.METRIC_NAMESPACE, "MetricName": m.name, "Dimensions": dims},
                "Period": period if m.kind == "window" else 60,
                "Stat": m.stat,
            },
            "ReturnData": True,
        })
    results: dict[str, list[tuple[datetime, float]]] = {}
    try:
        paginator = cloudwatch.get_paginator("get_metric_data")
        for page in paginator.paginate(
            MetricDataQueries=queries, StartTime=start, EndTime=end, ScanBy="TimestampDescending"
        ):
            for r in page.get("MetricDataResults", []):
                pts = results.setdefault(r["Label"], [])
                pts.extend(zip(r.get("Timestamps", []), r.get("Values", []), strict=False))
    except (BotoCoreError, ClientError) as e:
        raise OperationError(f"CloudWatch GetMetricData failed for {dims[0]['Value']}: {e}") from None

    def window(field: str) -> float | None:
        pts = results.get(field) or []
        if not pts:
            return None
        if METRICS[field].stat == "Sum":
            return float(sum(v for _, v in pts))
        return float(max(pts)[1])  # one period spans the window; take the newest if there are two

    def latest(field: str) -> float | None:
        pts = results.get(field) or []
        return float(max(pts)[1]) if pts else None

    def count(field: str) -> float:
        return window(field) or 0.0

    requests = count("requests")
    tokens_out = count("tokens_out")
    return Summary(
        source=f"cloudwatch:{dims[0]['Value']}",
        at=end.timestamp(),
        window_s=float(period),
        requests=requests,
        requests_per_s=requests / period,
        latency_p50_s=window("latency_p50_s"),
        latency_p99_s=window("latency_p99_s"),
        ttft_p50_s=window("ttft_p50_s"),
        ttft_p99_s=window("ttft_p99_s"),
        queue_wait_p50_s=window("queue_wait_p50_s"),
        queue_wait_p99_s=window("queue_wait_p99_s"),
        tokens_in=count("tokens_in"),
        tokens_out=tokens_out,
        tokens_per_s=tokens_out / period,
        in_flight=latest("in_flight") or 0.0,
        replicas_ready=latest("replicas_ready") or 0.0,
        replicas_starting=latest("replicas_starting") or 0.0,
        status_429=count("status_429"),
        status_503=count("status_503"),
        status_5xx=count("status_5xx"),
        lease_leaks=count("lease_leaks"),
    )
