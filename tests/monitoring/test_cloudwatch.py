"""Percentiles read from CloudWatch: the part moto cannot play (it computes no p50/p99).

A real boto3 CloudWatch client with botocore's Stubber: the request is validated against the
service model (member names, types, required fields), the response goes through botocore's parser,
and read_summary turns it into the summary; the queries themselves are checked for the statistic
and period CloudWatch is asked for. The counters and gauges are covered against moto's server
in tests/cli/test_monitoring.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from warmstart.errors import OperationError
from warmstart.monitoring.cloudwatch import METRICS, read_summary

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def _client() -> Any:
    return boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _result(label: str, points: list[tuple[datetime, float]]) -> dict[str, Any]:
    return {"Id": f"m{list(METRICS).index(label)}", "Label": label, "StatusCode": "Complete",
            "Timestamps": [t for t, _ in points], "Values": [v for _, v in points]}


def test_percentiles_are_asked_over_one_window_period_and_read_in_seconds() -> None:
    cw = _client()
    sent: list[dict[str, Any]] = []
    cw.meta.events.register("provide-client-params.cloudwatch.GetMetricData",
                            lambda params, **_: sent.append(params))
    older, newer = NOW - timedelta(minutes=20), NOW - timedelta(minutes=5)
    with Stubber(cw) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": [
            _result("latency_p50_s", [(newer, 412.0)]),
            # a window that straddles two periods: the newest period's percentile is the one shown
            _result("latency_p99_s", [(newer, 2350.0), (older, 9000.0)]),
            _result("ttft_p50_s", [(newer, 88.0)]),
            _result("ttft_p99_s", [(newer, 640.0)]),
            _result("requests", [(newer, 1200.0)]),
        ]})
        s = read_summary(cw, environment="dev", endpoint="chat", window_s=900, now=NOW)
        stub.assert_no_pending_responses()

    assert (s.latency_p50_s, s.latency_p99_s) == (pytest.approx(0.412), pytest.approx(2.35))
    assert (s.ttft_p50_s, s.ttft_p99_s) == (pytest.approx(0.088), pytest.approx(0.64))
    assert s.queue_wait_p50_s is None and s.queue_wait_p99_s is None  # no data: unknown, not zero
    assert s.requests == 1200 and s.requests_per_s == pytest.approx(1200 / 900)

    (params,) = sent
    stats = {q["Label"]: q["MetricStat"] for q in params["MetricDataQueries"]}
    assert stats["latency_p99_s"]["Stat"] == "p99" and stats["latency_p99_s"]["Period"] == 900
    assert stats["latency_p99_s"]["Metric"]["Dimensions"] == [{"Name": "Endpoint", "Value": "chat"}]
    assert stats["in_flight"]["Period"] == 60  # gauges: the latest minute
    assert params["EndTime"] - params["StartTime"] == timedelta(seconds=900)


def test_a_window_not_in_whole_minutes_is_rounded_up() -> None:
    cw = _client()
    sent: list[dict[str, Any]] = []
    cw.meta.events.register("provide-client-params.cloudwatch.GetMetricData",
                            lambda params, **_: sent.append(params))
    with Stubber(cw) as stub:
        stub.add_response("get_metric_data", {"MetricDataResults": []})
        s = read_summary(cw, environment="dev", endpoint="chat", window_s=61, now=NOW)
    assert s.window_s == 120 and s.latency_p99_s is None and s.requests == 0
    assert {q["MetricStat"]["Period"] for q in sent[0]["MetricDataQueries"]} == {120, 60}


def test_access_denied_is_one_line_naming_the_endpoint() -> None:
    cw = _client()
    with Stubber(cw) as stub:
        stub.add_client_error("get_metric_data", service_error_code="AccessDenied",
                              service_message="not authorized to perform: cloudwatch:GetMetricData",
                              http_status_code=403)
        with pytest.raises(OperationError) as e:
            read_summary(cw, environment="dev", endpoint="chat", window_s=900, now=NOW)
    assert "endpoint chat" in str(e.value) and "AccessDenied" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_window_under_a_minute_is_refused() -> None:
    with pytest.raises(OperationError, match="window=30s .* use >= 60"):
        read_summary(_client(), environment="dev", endpoint="chat", window_s=30, now=NOW)
