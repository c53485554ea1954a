"""The same summary as the local /metrics view, read from CloudWatch (GetMetricData) for a stack.

The metric names are warmstart/metrics.py's (the contract shared with the gate that publishes them
and the Monitoring component's dashboard and alarms): namespace Warmstart, dimension
Endpoint=<endpoint name>. Latency, time to first token and queue wait come from the gate's request
log through metric filters, in milliseconds. Replicas starting are the replica ASG's
GroupPendingInstances (the node group enables ASG group metrics).

One GetMetricData call per reading: counters and percentiles over the whole window (one period the
size of the window, so CloudWatch computes the percentile over every request rather than us
averaging per-minute percentiles), gauges as their most recent minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from warmstart import metrics, naming
from warmstart.errors import OperationError
from warmstart.monitoring.parse import Summary

__all__ = ["METRICS", "CloudWatchMetric", "read_summary"]


@dataclass(frozen=True)
class CloudWatchMetric:
    name: str
    stat: str
    kind: Literal["window", "latest"]
    scale: float = 1.0  # multiply into the summary's unit (ms -> s)
    asg: bool = False  # AWS/AutoScaling, dimension AutoScalingGroupName=<replica ASG>


_MS = 0.001

# summary field -> where CloudWatch holds it
METRICS: dict[str, CloudWatchMetric] = {
    "requests": CloudWatchMetric(metrics.REQUESTS, "Sum", "window"),
    "latency_p50_s": CloudWatchMetric("Latency", "p50", "window", _MS),
    "latency_p99_s": CloudWatchMetric("Latency", "p99", "window", _MS),
    "ttft_p50_s": CloudWatchMetric("TimeToFirstToken", "p50", "window", _MS),
    "ttft_p99_s": CloudWatchMetric("TimeToFirstToken", "p99", "window", _MS),
    "queue_wait_p50_s": CloudWatchMetric("QueueWait", "p50", "window", _MS),
    "queue_wait_p99_s": CloudWatchMetric("QueueWait", "p99", "window", _MS),
    "tokens_out": CloudWatchMetric("OutputTokens", "Sum", "window"),
    "status_429": CloudWatchMetric("Rejected429", "Sum", "window"),
    "status_503": CloudWatchMetric("Rejected503", "Sum", "window"),
    "in_flight": CloudWatchMetric("InFlight", "Maximum", "latest"),
    "replicas_ready": CloudWatchMetric("ReadyReplicas", "Maximum", "latest"),
    "replicas_starting": CloudWatchMetric("GroupPendingInstances", "Maximum", "latest", asg=True),
}


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
    dims = [{"Name": metrics.DIMENSION, "Value": endpoint}]
    asg_dims = [{"Name": "AutoScalingGroupName", "Value": naming.replica_asg_name(environment, endpoint)}]
    queries = []
    for i, (field, m) in enumerate(METRICS.items()):
        namespace = "AWS/AutoScaling" if m.asg else metrics.NAMESPACE
        queries.append({
            "Id": f"m{i}",
            "Label": field,
            "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": m.name, "Dimensions": asg_dims if m.asg else dims},
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
        raise OperationError(f"CloudWatch GetMetricData failed for endpoint {endpoint}: {e}") from None

    def window(field: str) -> float | None:
        pts = results.get(field) or []
        if not pts:
            return None
        m = METRICS[field]
        if m.stat == "Sum":
            return float(sum(v for _, v in pts)) * m.scale
        return float(max(pts)[1]) * m.scale  # one period spans the window; the newest if two

    def latest(field: str) -> float | None:
        pts = results.get(field) or []
        return float(max(pts)[1]) * METRICS[field].scale if pts else None

    def count(field: str) -> float:
        return window(field) or 0.0

    requests = count("requests")
    tokens_out = count("tokens_out")
    return Summary(
        source=f"cloudwatch:{endpoint}",
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
        tokens_in=None,  # not published to CloudWatch
        tokens_out=tokens_out,
        tokens_per_s=tokens_out / period,
        in_flight=latest("in_flight") or 0.0,
        replicas_ready=latest("replicas_ready") or 0.0,
        replicas_starting=latest("replicas_starting") or 0.0,
        status_429=count("status_429"),
        status_503=count("status_503"),
        status_5xx=None,  # the ALB's HTTPCode_Target_5XX_Count holds these
        lease_leaks=None,  # a per-gate Prometheus figure; not published
    )
