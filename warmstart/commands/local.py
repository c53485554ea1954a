"""`warmstart local up|down|status`: the endpoint on this machine, real vLLM on the CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from runtime.local import embedded


def _say(msg: str) -> None:
    click.echo(f"==> {msg}", err=True)


@click.group()
def local() -> None:
    """Run the endpoint on this machine: the gate in front of real vLLM (CPU), no cloud."""


@local.command()
@click.option("--variant", default=embedded.DEFAULT_VARIANT, show_default=True, help="a CPU variant under variants/")
@click.option("--port", default=embedded.DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--home", type=click.Path(path_type=Path), help="state directory (default .warmstart/)")
@click.option("--idle-timeout", "idle_timeout_s", default=300.0, show_default=True,
              type=click.FloatRange(min=0.5), help="Flex: seconds idle before the replicas stop")
@click.option("--max-replicas", default=2, show_default=True, type=click.IntRange(1, 8))
@click.option("--standby/--no-standby", default=True, show_default=True,
              help="keep a pre-imported vLLM process for Instant Start")
@click.option("--keepalive-interval", "keepalive_s", default=5.0, show_default=True,
              type=click.FloatRange(min=0.1, max=15), help="SSE keep-alive period while a request waits")
@click.option("--no-wait", is_flag=True, help="print URL and key before the first replica is ready")
@click.option("--detach", is_flag=True, help="return once up; stop later with `warmstart local down`")
def up(variant: str, port: int, home: Path | None, idle_timeout_s: float, max_replicas: int,
       standby: bool, keepalive_s: float, no_wait: bool, detach: bool) -> None:
    """Start gate + local pool; print URL=, API_KEY= and PLAYGROUND= (also in .warmstart/local.json)."""
    s = embedded.LocalSettings(variant=variant, port=port, home=home, idle_timeout_s=idle_timeout_s,
                               max_replicas=max_replicas, standby=standby,
                               keepalive_interval_s=keepalive_s)
    info, proc = embedded.up(s, progress=_say, wait_ready=not no_wait)
    click.echo(f"URL={info['url']}")
    click.echo(f"API_KEY={info['api_key']}")
    click.echo(f"PLAYGROUND={info['playground']}")
    click.echo(f"MODEL={info['served_name']} (or \"default\")")
    _say(f"written to {embedded.info_path(s.home_dir)}")
    if detach:
        return
    _say("serving; Ctrl-C (or `warmstart local down`) stops everything")
    raise SystemExit(embedded.forward_signals(proc, s.home_dir, _say))


@local.command()
@click.option("--home", type=click.Path(path_type=Path), help="state directory (default .warmstart/)")
def down(home: Path | None) -> None:
    """Stop the local endpoint and every replica it started."""
    if embedded.down(home, progress=_say):
        _say("stopped")
    else:
        _say("nothing was running")


@local.command()
@click.option("--home", type=click.Path(path_type=Path), help="state directory (default .warmstart/)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(home: Path | None, as_json: bool) -> None:
    """Replicas, their state and in-flight requests."""
    st = embedded.status(home)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    if not st["running"]:
        click.echo("local endpoint: not running (start it with `make local` or `warmstart local up`)")
        return
    click.echo(f"local endpoint: running  {st['url']}  variant={st['variant']}  gate pid={st['pid']}")
    click.echo(f"target replicas: {st['target']}" + (f"  error: {st['error']}" if st["error"] else ""))
    reps = st["replicas"]
    if not reps:
        click.echo("replicas: none (scaled to zero; the next request wakes one)")
    for r in reps:
        age = time.time() - float(r["started"])
        inflight = "-" if r["in_flight"] is None else str(r["in_flight"])
        click.echo(f"  {r['id']}  {r['state']:<9} in-flight={inflight:<3} pid={r['pid']} {r['url']}  "
                   f"up {age:.0f}s{'  (instant start)' if r['via_standby'] else ''}")
    sb = st["standby"]
    if sb:
        click.echo(f"standby: pid={sb['pid']} {'ready' if sb['ready'] else 'importing vLLM'}")
