"""`warmstart endpoint metrics` end to end: --local against a real HTTP /metrics endpoint (a real
prometheus_client registry served on a real socket) and --stack against CloudWatch (moto over HTTP)."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from prometheus_client import start_http_server

from tests.monitoring.test_parse import GateMetrics
from tests.support.net import free_port
from warmstart import naming
from warmstart.monitoring.cli import metrics


@pytest.fixture()
def gate_metrics() -> Iterator[tuple[GateMetrics, str]]:
    m = GateMetrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=m.registry)
    yield m, f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _traffic(m: GateMetrics, n: int, latency: float) -> None:
    for _ in range(n):
        m.requests.labels("/v1/chat/completions", "200").inc()
        m.duration.labels("/v1/chat/completions").observe(latency)
        m.ttft.labels("/v1/chat/completions").observe(latency / 10)
        m.tokens.labels("in").inc(20)
        m.tokens.labels("out").inc(50)


def test_local_reading_shows_the_figures(gate_metrics: tuple[GateMetrics, str]) -> None:
    m, url = gate_metrics
    _traffic(m, 20, 0.3)
    m.requests.labels("/v1/chat/completions", "429").inc(3)
    m.replicas.labels("ready").set(1)
    m.in_flight.set(2)
    res = CliRunner().invoke(metrics, ["--local", "--url", url + "/v1"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "since the gate started" in out
    assert "requests     23" in out and "429: 3" in out
    assert "latency      p50 " in out
    assert "in 400   out 1,000" in out
    assert "1 ready, 0 starting" in out
    assert "local (CPU): no cloud cost" in out


def test_local_json(gate_metrics: tuple[GateMetrics, str]) -> None:
    m, url = gate_metrics
    _traffic(m, 4, 0.3)
    res = CliRunner().invoke(metrics, ["--local", "--url", url, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["requests"] == 4 and d["tokens_out"] == 200 and d["cost"] is None
    assert 0.25 < d["latency_p50_s"] <= 0.5


def test_watch_prints_one_line_per_interval_and_plots(
    gate_metrics: tuple[GateMetrics, str], tmp_path: Path
) -> None:
    m, url = gate_metrics
    _traffic(m, 5, 0.3)
    svg = tmp_path / "watch.svg"
    res = CliRunner().invoke(
        metrics, ["--local", "--url", url, "--watch", "--interval", "0.2", "--samples", "3", "--json",
                  "--plot", str(svg)],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    # Each line covers one interval after the baseline: nothing happened since, so no requests.
    assert all(d["window_s"] is not None and d["requests"] == 0 for d in lines)
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    assert any(el.get("data-series") == "ready" for el in root.iter())


@pytest.mark.parametrize("args, message", [
    ([], "pass exactly one of --stack ENV or --local"),
    (["--local", "--stack", "dev"], "pass exactly one of --stack ENV or --local"),
    (["--local", "--plot", "x.svg"], "--plot needs --watch"),
    (["--local", "--endpoint", "chat"], "apply to --stack only"),
    (["--local", "--url", "ftp://host"], "not an http(s) URL"),
])
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    res = CliRunner().invoke(metrics, args)
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: {res.output.strip().removeprefix('error: ')}"]
    assert message in res.output
    assert "Traceback" not in res.output


def test_unreachable_gate_says_how_to_start_it() -> None:
    res = CliRunner().invoke(metrics, ["--local", "--url", f"http://127.0.0.1:{free_port()}"])
    assert res.exit_code == 2
    assert "cannot read" in res.output and "make local" in res.output


# ---- CloudWatch ---------------------------------------------------------------------------------


STACK = textwrap.dedent("""\
    config:
      aws:region: us-east-1
      warmstart:environment: dev
      warmstart:endpoints:
        - name: chat
          variant: llama31-8b-fp8-l4
          gate_instances: 2
          allow_http: true
""")


def test_stack_reads_cloudwatch_and_prices_the_fleet(
    aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Pulumi.dev.yaml").write_text(STACK)
    monkeypatch.setenv("WARMSTART_STACKS_DIR", str(tmp_path))
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    dims = [{"Name": "Endpoint", "Value": "chat"}]
    now = datetime.now(UTC)
    data = []
    for minutes_ago in (2, 5, 9):
        ts = now - timedelta(minutes=minutes_ago)
        data += [
            {"MetricName": "Requests", "Dimensions": dims, "Timestamp": ts, "Value": 100.0},
            {"MetricName": "OutputTokens", "Dimensions": dims, "Timestamp": ts, "Value": 30000.0},
            {"MetricName": "Rejected429", "Dimensions": dims, "Timestamp": ts, "Value": 2.0},
        ]
    recent = now - timedelta(seconds=30)
    data += [
        {"MetricName": "ReadyReplicas", "Dimensions": dims, "Timestamp": recent, "Value": 2.0},
        {"MetricName": "InFlight", "Dimensions": dims, "Timestamp": recent, "Value": 17.0},
        # another endpoint's figures must not leak into this one
        {"MetricName": "Requests", "Dimensions": [{"Name": "Endpoint", "Value": "other"}],
         "Timestamp": now - timedelta(minutes=1), "Value": 9999.0},
    ]
    cw.put_metric_data(Namespace="AWS/AutoScaling", MetricData=[{
        "MetricName": "GroupPendingInstances", "Timestamp": recent, "Value": 1.0,
        "Dimensions": [{"Name": "AutoScalingGroupName", "Value": naming.replica_asg_name("dev", "chat")}],
    }])
    cw.put_metric_data(Namespace=naming.METRIC_NAMESPACE, MetricData=data)

    res = CliRunner().invoke(metrics, ["--stack", "dev", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["source"] == "cloudwatch:chat"
    assert d["requests"] == 300 and d["tokens_out"] == 90000 and d["status_429"] == 6
    assert (d["replicas_ready"], d["replicas_starting"], d["in_flight"]) == (2, 1, 17)
    assert d["tokens_per_s"] == pytest.approx(90000 / 900)
    c = d["cost"]
    # 3 running g6.xlarge + 2 c7i.large gates + the ALB, from the repo's price table
    from warmstart.monitoring.cost import PriceTable

    t = PriceTable.load()
    expected = 3 * t.price("g6.xlarge", "us-east-1") + 2 * t.price("c7i.large", "us-east-1") + t.price("alb", "us-east-1")
    assert c["usd_per_hour"] == pytest.approx(expected)
    assert c["usd_per_million_tokens"] == pytest.approx(expected / (100 * 3600) * 1e6)

    text = CliRunner().invoke(metrics, ["--stack", "dev"])
    assert text.exit_code == 0, text.output
    assert "3 × g6.xlarge" in text.output.replace("3.0 × ", "3 × ")
    assert "per million output tokens" in text.output and "as of" in text.output


def test_unknown_stack_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMSTART_STACKS_DIR", str(tmp_path))
    res = CliRunner().invoke(metrics, ["--stack", "nope"])
    assert res.exit_code == 2
    assert "stack='nope'" in res.output and "Traceback" not in res.output


def test_local_reads_the_url_make_local_wrote(
    gate_metrics: tuple[GateMetrics, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = gate_metrics
    (tmp_path / "local.json").write_text(json.dumps({"url": url + "/v1", "api_key": "ws_live_" + "a" * 64}))
    monkeypatch.setenv("WARMSTART_HOME", str(tmp_path))
    res = CliRunner().invoke(metrics, ["--local", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["source"] == f"local:{url}/v1"
