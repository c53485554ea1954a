"""The gate under real gunicorn on a real port, for tests (and anyone who wants one quickly).

    def test_x(gate_factory, upstream, redis_url):
        gate = gate_factory(store=redis_url, replica_cap=4)      # static pool on the upstream
        key = gate.mint(rate_per_min=60)                           # a real key in a real store
        client = openai.OpenAI(base_url=gate.base_url, api_key=key)

Each gate is `python -m runtime.gate --config FILE` in its own process group (the gevent
workers monkey-patch themselves; pytest's process stays unpatched). Its stderr (the JSON access
log) goes to a file the test can read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port

SERVED = "test-model"


class GateServer:
    def __init__(self, workdir: Path, config: dict[str, Any], workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.endpoint: str = config["endpoint"]
        self.port = free_port()
        self.config_path = workdir / f"gate-{self.port}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"gate-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.gate", "--config", str(self.config_path),
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--graceful-timeout", "2"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"metrics-{self.port}"),
                 **(env or {})},
        )
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gate exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gate not healthy after {timeout}s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def mint(self, **kw: Any) -> str:
        """A real key for this gate's endpoint (kw: kind, plan, expires_at, rate_per_min, daily_cap)."""
        from tests.support.keys import mint_key

        kw.setdefault("endpoint", self.endpoint)
        endpoint = kw.pop("endpoint")
        return mint_key(self.config["keys"], endpoint, **kw)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, lab = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in lab for k, v in labels.items()):
                total += float(value)
        return total

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{") and '"request_id"' in line:
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def gate_config(upstreams: list[str], keys: str, store: str = "memory", **over: Any) -> dict[str, Any]:
    """A gate config for tests: a fresh endpoint name (so stores need no flushing), a static pool."""
    cfg: dict[str, Any] = {
        "endpoint": over.pop("endpoint", f"ep-{uuid.uuid4().hex[:10]}"),
        "plan": "pro",
        "served_name": SERVED,
        "store": store,
        "keys": keys,
        "pool": {"kind": "static", "upstreams": upstreams},
        "hold_timeout_s": 5,
        "lease_ttl_s": 30,
        "keepalive_interval_s": 1,
        "key_cache_ttl_s": 0.5,
    }
    cfg.update(over)
    return cfg


GateFactory = Callable[..., GateServer]


@pytest.fixture()
def gate_factory(tmp_path: Path, upstream: Any) -> Iterator[GateFactory]:
    """Start gates in front of the session's deterministic upstream; all stopped after the test.

    gate_factory(store="memory"|redis_url, workers=1, upstreams=[...], **config overrides)
    """
    started: list[GateServer] = []

    def start(*, workers: int = 1, upstreams: list[str] | None = None, env: dict[str, str] | None = None,
              **over: Any) -> GateServer:
        over.setdefault("keys", f"sqlite:{tmp_path / 'keys.db'}")
        keys = over.pop("keys")
        cfg = gate_config(upstreams or [upstream.url], keys, **over)
        server = GateServer(tmp_path, cfg, workers=workers, env=env)
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()
