"""`warmstart gate --upstream URL [...]`: the gate in front of vLLM servers you already run.

    warmstart keys create --keys sqlite:keys.db --endpoint demo      # prints the key once
    warmstart gate --upstream http://10.0.0.5:8000 --endpoint demo --keys sqlite:keys.db

Builds a GateConfig with a `static` pool from the flags (or reads --config), validates it, writes
it next to the key store's directory and replaces this process with gunicorn (gevent workers) via
`python -m runtime.gate`, so signals (Ctrl-C, SIGTERM for a graceful stop) reach gunicorn itself.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from warmstart.errors import ConfigError


def _served_name(upstream: str) -> str:
    """The model the upstream serves, from its /v1/models (vLLM lists its --served-model-name)."""
    url = upstream.rstrip("/").removesuffix("/v1") + "/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.load(r)
        return str(data["data"][0]["id"])
    except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(
            f"--served-name not given and {url} did not list a model ({e}); pass --served-name NAME"
        ) from None


@click.command("gate")
@click.option("--upstream", "upstreams", multiple=True, metavar="URL",
              help="vLLM base URL (http://HOST:PORT); repeat for several replicas.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the gate to the network.")
@click.option("--plan", default="pro", show_default=True, help="Plan whose budgets apply.")
@click.option("--replica-cap", default=30, show_default=True, type=int, help="In-flight requests per replica.")
@click.option("--store", default="memory", show_default=True, metavar="memory|redis://...",
              help="Admission store; 'memory' is one process only.")
@click.option("--keys", "keys_url", default="sqlite:.warmstart/keys.db", show_default=True,
              envvar="WARMSTART_KEYS", metavar="sqlite:PATH|dynamodb:TABLE", help="Key store.")
@click.option("--endpoint", default="default", show_default=True, help="Endpoint id the keys are scoped to.")
@click.option("--served-name", default=None, help="Model name the upstreams serve (default: ask the first).")
@click.option("--workers", default=None, type=click.IntRange(1, 256), help="gunicorn workers (default: CPUs).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="A gate config file (YAML/JSON) instead of the flags above.")
def gate(upstreams: tuple[str, ...], port: int, host: str, plan: str, replica_cap: int, store: str,
         keys_url: str, endpoint: str, served_name: str | None, workers: int | None,
         config_path: str | None) -> None:
    """Run the gate (auth, quotas, streaming) in front of existing vLLM servers."""
    from runtime.gate.config import GateConfig

    if config_path:
        if upstreams:
            raise ConfigError("pass either --config FILE or --upstream URL, not both")
        config = GateConfig.load(config_path)
        path = Path(config_path)
    else:
        if not upstreams:
            raise ConfigError("no upstream given; pass --upstream http://HOST:PORT (a running vLLM server)")
        data: dict[str, Any] = {
            "endpoint": endpoint, "plan": plan, "replica_cap": replica_cap, "store": store, "keys": keys_url,
            "served_name": served_name or "unset", "pool": {"kind": "static", "upstreams": list(upstreams)},
        }
        GateConfig.parse(data, source="warmstart gate")  # flag errors first, before any network call
        data["served_name"] = served_name or _served_name(upstreams[0])
        config = GateConfig.parse(data, source="warmstart gate")
        state = Path(".warmstart")
        state.mkdir(exist_ok=True)
        path = state / f"gate-{port}.json"
        path.write_text(config.model_dump_json(indent=2))

    if config.store == "memory" and workers not in (None, 1):
        click.echo(f"note: --store memory keeps leases and quotas in one process, so the gate runs 1 worker "
                   f"(not {workers}); use --store redis://... for more", err=True)
    if config.store == "memory":
        workers = 1
    argv = [sys.executable, "-m", "runtime.gate", "--config", str(path), "--bind", f"{host}:{port}"]
    if workers:
        argv += ["--workers", str(workers)]
    click.echo(f"gate: http://{host}:{port}/v1 → {', '.join(config.pool.upstreams) or config.pool.kind} "
               f"(endpoint {config.endpoint}, model {config.served_name}, plan {config.plan})", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
