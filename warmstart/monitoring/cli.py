"""`warmstart endpoint metrics`: an endpoint's figures and estimated cost, once or continuously.

    warmstart endpoint metrics --local [--url URL] [--watch [--interval S]] [--json] [--plot F.svg]
    warmstart endpoint metrics --stack ENV [--endpoint E] [--window S] [--watch ...]

Locally it reads the gate's Prometheus /metrics; for a stack it reads CloudWatch. One reading shows
figures since the gate started (locally) or over --window (CloudWatch); --watch prints one line per
interval over that interval, and --plot writes those samples as an SVG when the watch ends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from warmstart.errors import ConfigError, WarmstartError
from warmstart.monitoring.cost import CostEstimate, PriceTable, estimate
from warmstart.monitoring.parse import Scrape, Summary, scrape, summarize

DEFAULT_LOCAL_URL = "http://127.0.0.1:8080"


def local_state_path() -> Path:
    """Where `make local` / `warmstart local up` write local.json: $WARMSTART_HOME, else .warmstart/
    under the checkout (the local pool's rule, runtime/pool/local.py)."""
    env = os.environ.get("WARMSTART_HOME")
    home = Path(env) if env else Path(__file__).resolve().parents[2] / ".warmstart"
    return home / "local.json"


def local_url(explicit: str | None) -> str:
    """--url, else the URL `make local` wrote, else the local default."""
    if explicit:
        return explicit
    try:
        data = json.loads(local_state_path().read_text())
        url = data.get("URL") or data.get("url")
        if isinstance(url, str) and url:
            return url
    except (OSError, ValueError, AttributeError):
        pass
    return DEFAULT_LOCAL_URL


# ---- stacks -------------------------------------------------------------------------------------


class StackTarget:
    """A deployed endpoint: where its metrics are and what its instances cost."""

    def __init__(self, stack: str, endpoint: str | None, region: str | None) -> None:
        # Imported here: reading a stack file needs ruamel.yaml and the operations package, which
        # the --local path never touches.
        from warmstart.ops.stackconfig import StackFile
        from warmstart.spec import load_variant

        sf = StackFile.load(stack)
        cfg = sf.endpoint(endpoint)
        self.environment = cfg.environment
        self.endpoint = cfg.name
        self.region = region or sf.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not self.region:
            raise ConfigError(f"stack {stack} sets no aws:region; pass --region R or set AWS_REGION")
        self.replica_type = cfg.gpu_instance_type or load_variant(cfg.variant).gpu.instance_type
        self.gate_type = cfg.gate_instance_type
        self.gate_instances = cfg.gate_instances

    def read(self, cloudwatch: Any, window_s: float) -> Summary:
        from warmstart.monitoring.cloudwatch import read_summary

        return read_summary(cloudwatch, environment=self.environment, endpoint=self.endpoint, window_s=window_s)

    def cost(self, s: Summary, table: PriceTable) -> CostEstimate:
        return estimate(
            table,
            region=str(self.region),
            replica_instance_type=self.replica_type,
            replicas=s.replicas_ready + s.replicas_starting,
            gate_instance_type=self.gate_type,
            gate_instances=self.gate_instances,
            tokens_per_s=s.tokens_per_s,
        )


# ---- output -------------------------------------------------------------------------------------


def _s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _n(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def _usd(v: float | None) -> str:
    return "–" if v is None else f"${v:,.2f}" if v >= 0.1 else f"${v:.4f}"


def cost_line(c: CostEstimate | None) -> str:
    if c is None:
        return "local (CPU): no cloud cost"
    per_m = _usd(c.usd_per_million_tokens) + " per million output tokens" if c.usd_per_million_tokens else (
        "per million tokens: – (no tokens generated in the window)"
    )
    return (
        f"{_usd(c.usd_per_hour)}/hour ({_n(c.replicas, 1)} × {c.replica_instance_type} {_usd(c.replica_usd_per_hour)}"
        f" + gate {c.gate_instances} × {c.gate_instance_type} {_usd(c.gate_usd_per_hour)}"
        f" + ALB {_usd(c.fixed_usd_per_hour)}); {per_m}  [{c.region} on-demand prices as of {c.prices_as_of}]"
    )


def render(s: Summary, title: str, c: CostEstimate | None) -> str:
    span = "since the gate started" if s.window_s is None else f"last {s.window_s:.0f} s"
    rate = f" ({_n(s.requests_per_s, 2)}/s)" if s.requests_per_s is not None else ""
    if s.tokens_per_s is not None:
        tps = f" ({_n(s.tokens_per_s, 1)} tokens/s)"
    elif s.stream_tokens_per_s is not None:
        tps = f" ({_n(s.stream_tokens_per_s, 1)} tokens/s per stream)"
    else:
        tps = ""
    rows = [
        f"{title} — {span}",
        f"  requests     {_n(s.requests)}{rate}   429: {_n(s.status_429)}   503: {_n(s.status_503)}   5xx: {_n(s.status_5xx)}",
        f"  latency      p50 {_s(s.latency_p50_s)}   p99 {_s(s.latency_p99_s)}",
        f"  first token  p50 {_s(s.ttft_p50_s)}   p99 {_s(s.ttft_p99_s)}",
        f"  queue wait   p50 {_s(s.queue_wait_p50_s)}   p99 {_s(s.queue_wait_p99_s)}",
        f"  tokens       in {_n(s.tokens_in)}   out {_n(s.tokens_out)}{tps}",
        f"  in flight    {_n(s.in_flight)}",
        f"  replicas     {_n(s.replicas_ready)} ready, {_n(s.replicas_starting)} starting",
        f"  lease leaks  {_n(s.lease_leaks)}",
        f"  cost         {cost_line(c)}",
    ]
    return "\n".join(rows)


WATCH_HEADER = (
    f"{'time':<9}{'req/s':>7}{'p50':>9}{'p99':>9}{'ttft50':>9}{'tok/s':>8}{'infl':>6}{'ready':>6}"
    f"{'start':>6}{'429':>5}{'503':>5}{'$/h':>9}"
)


def watch_row(s: Summary, c: CostEstimate | None) -> str:
    clock = datetime.fromtimestamp(s.at, UTC).strftime("%H:%M:%S")
    return (
        f"{clock:<9}{_n(s.requests_per_s, 2):>7}{_s(s.latency_p50_s):>9}{_s(s.latency_p99_s):>9}"
        f"{_s(s.ttft_p50_s):>9}{_n(s.tokens_per_s, 1):>8}{_n(s.in_flight):>6}{_n(s.replicas_ready):>6}"
        f"{_n(s.replicas_starting):>6}{_n(s.status_429):>5}{_n(s.status_503):>5}"
        f"{(_usd(c.usd_per_hour) if c else '–'):>9}"
    )


def as_json(s: Summary, c: CostEstimate | None) -> str:
    d = s.to_dict()
    d["cost"] = c.to_dict() if c else None
    return json.dumps(d, sort_keys=True)


# ---- the command ------------------------------------------------------------------------------


@click.command("metrics")
@click.option("--stack", metavar="ENV", help="read CloudWatch for this stack (stacks/Pulumi.ENV.yaml)")
@click.option("--endpoint", metavar="E", help="endpoint of the stack (needed when it has several)")
@click.option("--local", "local", is_flag=True, help="read the local gate's /metrics")
@click.option("--url", metavar="URL", help=f"gate URL for --local (default: .warmstart/local.json, else {DEFAULT_LOCAL_URL})")
@click.option("--region", metavar="R", help="AWS region (default: the stack's aws:region)")
@click.option("--window", type=click.FloatRange(min=60), default=900.0, show_default=True,
              help="--stack: seconds of CloudWatch data per reading")
@click.option("--watch", is_flag=True, help="keep reading; one line per interval")
@click.option("--interval", type=click.FloatRange(min=0.2), default=5.0, show_default=True,
              help="seconds between readings with --watch")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="stop --watch after N readings")
@click.option("--json", "json_out", is_flag=True, help="JSON (one object per line with --watch)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              help="with --watch: write latency and replicas over time to this SVG when the watch ends")
@click.pass_context
def metrics(
    ctx: click.Context, stack: str | None, endpoint: str | None, local: bool, url: str | None,
    region: str | None, window: float, watch: bool, interval: float, samples: int | None,
    json_out: bool, plot_path: str | None,
) -> None:
    """Requests, latency, time to first token, tokens/s, replicas, 429/503s and estimated cost."""
    try:
        _run(stack, endpoint, local, url, region, window, watch, interval, samples, json_out, plot_path)
    except WarmstartError as e:
        # The same one-line contract as the root command, also when this command runs on its own.
        click.echo(f"error: {e}", err=True)
        ctx.exit(2)


def _run(
    stack: str | None, endpoint: str | None, local: bool, url: str | None, region: str | None,
    window: float, watch: bool, interval: float, samples: int | None, json_out: bool, plot_path: str | None,
) -> None:
    if bool(stack) == bool(local):
        raise ConfigError("pass exactly one of --stack ENV or --local")
    if local and (endpoint or region):
        raise ConfigError("--endpoint and --region apply to --stack only; drop them with --local")
    if plot_path and not watch:
        raise ConfigError("--plot needs --watch (a plot is drawn from readings over time)")

    read: Callable[[], Summary]
    cost: Callable[[Summary], CostEstimate | None]
    if local:
        target = local_url(url)
        title = f"local endpoint {target}"
        previous: list[Scrape] = []

        def read() -> Summary:
            cur = scrape(target)
            prev = previous[-1] if previous else None
            previous[:] = [cur]
            return summarize(cur, prev, source=f"local:{target}")

        def cost(s: Summary) -> CostEstimate | None:
            return None
    else:
        from warmstart.ops.aws import client

        st = StackTarget(str(stack), endpoint, region)
        cw = client("cloudwatch", st.region)
        table = PriceTable.load()
        title = f"stack {stack} endpoint {st.endpoint} ({st.region})"

        def read() -> Summary:
            return st.read(cw, window)

        def cost(s: Summary) -> CostEstimate | None:
            return st.cost(s, table)

    if not watch:
        s = read()
        c = cost(s)
        click.echo(as_json(s, c) if json_out else render(s, title, c))
        return

    collected: list[Summary] = []
    if local:
        read()  # the baseline: every line after it covers one interval
        time.sleep(interval)
    elif not json_out:
        click.echo(f"{title} — each line covers the last {window:.0f} s")
    if not json_out:
        click.echo(WATCH_HEADER)
    try:
        while True:
            s = read()
            c = cost(s)
            collected.append(s)
            click.echo(as_json(s, c) if json_out else watch_row(s, c))
            if samples is not None and len(collected) >= samples:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if plot_path and collected:
            from warmstart.monitoring.plot import write_svg

            write_svg(plot_path, collected, title)
            click.echo(f"wrote {plot_path} ({len(collected)} readings)", err=True)
