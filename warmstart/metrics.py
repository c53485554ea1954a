"""CloudWatch metric names shared by whoever publishes them (the gate, the fleet commands) and
whoever reads them (components/scaling.py's policies and alarms, components/monitoring.py's
dashboard). All live in namespace naming.METRIC_NAMESPACE with one dimension, Endpoint=<name>.

Two ways in:
- PUBLISHED: the gate calls PutMetricData once a minute (also when idle: a zero Requests datapoint
  is what tells the Flex idle rule that nobody called; a missing one is treated the same way).
- FROM_LOGS: the gate writes one JSON line per finished request to its log group; metric filters
  (components/monitoring.py) turn the named fields into metrics, so percentiles are exact
  CloudWatch percentiles over every request, not averages of averages.
"""

from __future__ import annotations

from warmstart.naming import METRIC_NAMESPACE

NAMESPACE = METRIC_NAMESPACE
DIMENSION = "Endpoint"

# name -> (unit, meaning)
PUBLISHED: dict[str, tuple[str, str]] = {
    "InFlight": ("Count", "admitted requests not yet finished, across the endpoint (Maximum over the minute)"),
    "InFlightPerReplica": ("Count", "InFlight / max(ReadyReplicas, 1): the scaling metric, target = variant.target_concurrency"),
    "ReadyReplicas": ("Count", "replicas the gate routes to"),
    "Requests": ("Count", "requests received in the minute (Sum); 0 when idle"),
    "Waiting": ("Count", "requests held waiting for capacity, e.g. through a cold start (Maximum over the minute); 0 when none"),
    "Rejected429": ("Count", "requests refused with 429 (plan budget, rate, daily cap)"),
    "Rejected503": ("Count", "requests refused with 503 (stopped, or no capacity within the hold bound)"),
}

# metric name -> (unit, JSON field of the gate's access log line; runtime/gate/access_log.py)
FROM_LOGS: dict[str, tuple[str, str]] = {
    "Latency": ("Milliseconds", "duration_ms"),
    "TimeToFirstToken": ("Milliseconds", "ttft_ms"),
    "QueueWait": ("Milliseconds", "queue_ms"),
    "OutputTokens": ("Count", "tokens_out"),
}
# An access line is recognised by its request_id; its `endpoint` field (the GateConfig's endpoint)
# becomes the Endpoint dimension, so one filter serves every endpoint of the log group.
ACCESS_LOG_ID_FIELD = "request_id"
ACCESS_LOG_ENDPOINT_FIELD = "endpoint"

INFLIGHT_PER_REPLICA = "InFlightPerReplica"
REQUESTS = "Requests"
IN_FLIGHT = "InFlight"
WAITING = "Waiting"
