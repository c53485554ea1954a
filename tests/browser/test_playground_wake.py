"""The first request after idle: the pool is at zero, the gate wakes it and holds the stream with
`: keep-alive` comments while the replica boots. The page must say it is waking the endpoint (and
count those comments) and then stream the answer, never show an error.

The gate runs in-process (werkzeug's threaded server on a real port) so it can be handed a pool
that behaves like a scaled-to-zero backend: nothing until woken, `starting` for a few seconds, then
one ready replica, which is the real deterministic upstream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from runtime.gate.app import create_app
from runtime.gate.config import GateConfig
from runtime.gate.keys import CachedKeyStore, open_key_store
from runtime.gate.store import MemoryStore
from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool
from tests.support.net import free_port
from tests.support.upstream import UpstreamProcess
from warmstart.monitoring.cli import metrics

BOOT_S = 3.0


class ZeroPool(ReplicaPool):
    """Scaled to zero until woken; then `starting` for BOOT_S seconds; then one ready replica."""

    kind = "test-zero"

    def __init__(self, url: str) -> None:
        self.url = url
        self.woken_at: float | None = None
        self.wakes = 0

    def snapshot(self) -> PoolSnapshot:
        if self.woken_at is None:
            return PoolSnapshot()
        if time.monotonic() - self.woken_at < BOOT_S:
            return PoolSnapshot(starting=1)
        return PoolSnapshot(ready=(Replica("r1", self.url, cap=30),))

    def wake(self) -> None:
        self.wakes += 1
        if self.woken_at is None:
            self.woken_at = time.monotonic()

    def report_demand(self, in_flight: int) -> None:
        pass


@pytest.fixture()
def sleeping_gate(tmp_path: Path, upstream: UpstreamProcess) -> Iterator[tuple[str, str, ZeroPool]]:
    cfg = GateConfig.parse({
        "endpoint": "sleepy", "served_name": "test-model", "store": "memory",
        "keys": f"sqlite:{tmp_path / 'keys.db'}", "pool": {"kind": "static", "upstreams": ["http://127.0.0.1:1"]},
        "hold_timeout_s": 30, "keepalive_interval_s": 0.5,
    })
    raw = open_key_store(cfg.keys)
    key, _ = raw.create(endpoint="sleepy", kind="playground", daily_cap=5)
    pool = ZeroPool(upstream.url)
    app = create_app(cfg, pool=pool, store=MemoryStore(), keys=CachedKeyStore(raw, 1))
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", key, pool
    server.shutdown()
    thread.join()


def test_first_request_after_idle_shows_waking_then_streams(
    chromium: Any, sleeping_gate: tuple[str, str, ZeroPool], artifacts_dir: Path
) -> None:
    url, key, pool = sleeping_gate
    chromium.get("about:blank")
    chromium.get(f"{url}/playground#key={key}")
    WebDriverWait(chromium, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pane-a option")) >= 2)
    chromium.execute_script("""
      window.__states = [];
      const pane = document.getElementById('pane-a');
      new MutationObserver(() => window.__states.push(pane.dataset.state))
        .observe(pane, {attributes: true, attributeFilter: ['data-state']});
    """)
    chromium.find_element(By.ID, "send").click()
    WebDriverWait(chromium, 20).until(
        lambda d: d.find_element(By.ID, "pane-a").get_attribute("data-state") == "waking")
    state_text = chromium.find_element(By.CSS_SELECTOR, "#pane-a .state").text
    assert state_text.startswith("waking the endpoint")
    chromium.save_screenshot(str(artifacts_dir / "waking.png"))

    WebDriverWait(chromium, 30).until(
        lambda d: d.find_element(By.ID, "pane-a").get_attribute("data-state") in ("done", "error", "capped"))
    pane = chromium.find_element(By.ID, "pane-a")
    assert pane.get_attribute("data-state") == "done"
    assert int(pane.get_attribute("data-keepalives") or 0) >= 1  # the gate's hold was seen as such
    assert chromium.find_element(By.CSS_SELECTOR, "#pane-a .output").text.startswith("tok0 tok1")
    assert chromium.find_element(By.CSS_SELECTOR, "#pane-a .state").text == "done"
    states = chromium.execute_script("return window.__states")
    assert "error" not in states
    assert states.index("waking") < states.index("streaming") < states.index("done")
    assert pool.wakes >= 1
    # The held response's headers describe missing capacity (0 of 0), not the key's daily count.
    assert chromium.find_element(By.ID, "remaining").text != "0"

    # Idle again, the pool scales to zero with no request to refresh the gate's replica gauge:
    # `endpoint metrics` still reports the pool as it is now.
    live = json.loads(CliRunner().invoke(metrics, ["--local", "--url", url, "--json"]).output)
    assert (live["replicas_ready"], live["replicas_starting"]) == (1, 0)
    pool.woken_at = None
    live = json.loads(CliRunner().invoke(metrics, ["--local", "--url", url, "--json"]).output)
    assert (live["replicas_ready"], live["replicas_starting"]) == (0, 0)
