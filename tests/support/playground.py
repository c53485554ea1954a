"""Fixtures for the playground and monitoring tests: the real gate under gunicorn in front of the
deterministic upstream, and a real headless Chromium driven by Selenium.

    playground_gate   session: upstream (24 tokens, 120 ms apart, first after 1.5 s, so streaming
                      and the "waking" state are visible to a browser) + the gate under gunicorn
                      (tests.support.gate_server) with 2 gevent workers, memory store, sqlite
                      keys; .mint(...) makes keys
    chromium          session: Selenium WebDriver on /usr/bin/chromium + /usr/bin/chromedriver
                      (Debian packages; selenium-manager never downloads anything)
    artifacts_dir     artifacts/playground/ (gitignored): screenshots kept after the run
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

UPSTREAM_TOKENS = 24
UPSTREAM_INTERVAL_MS = 120
UPSTREAM_FIRST_TOKEN_MS = 1500


def _stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PlaygroundGate:
    """The gate engineer's GateServer (gunicorn, real socket) with its own slow upstream."""

    served_name = "test-model"

    def __init__(self, workdir: Path, workers: int = 2) -> None:
        # Imported here: gate_server is a pytest plugin of its own; importing it at module level
        # would load it before pytest can rewrite its asserts.
        from tests.support.gate_server import GateServer, gate_config

        up_port = free_port()
        self._upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upstream", "--port", str(up_port),
             "--model", self.served_name, "--tokens", str(UPSTREAM_TOKENS),
             "--interval-ms", str(UPSTREAM_INTERVAL_MS), "--first-token-ms", str(UPSTREAM_FIRST_TOKEN_MS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(up_port)
        self.upstream_url = f"http://127.0.0.1:{up_port}"
        config = gate_config([f"http://127.0.0.1:{up_port}"], keys=f"sqlite:{workdir / 'keys.db'}",
                             endpoint="demo", hold_timeout_s=30)
        try:
            self.server = GateServer(workdir, config, workers=workers)
        except BaseException:
            _stop(self._upstream)
            raise
        self.endpoint = self.server.endpoint

    @property
    def url(self) -> str:
        return self.server.url

    def mint(self, *, kind: str = "playground", daily_cap: int | None = None) -> str:
        return self.server.mint(kind=kind, daily_cap=daily_cap)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def log(self) -> str:
        return self.server.log()

    def upstream_stats(self) -> dict[str, Any]:
        import json

        with urllib.request.urlopen(f"{self.upstream_url}/_stats", timeout=10) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def stop(self) -> None:
        self.server.stop()
        _stop(self._upstream)


@pytest.fixture(scope="session")
def playground_gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaygroundGate]:
    gate = PlaygroundGate(tmp_path_factory.mktemp("playground-gate"))
    yield gate
    gate.stop()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = REPO / "artifacts" / "playground"
    d.mkdir(parents=True, exist_ok=True)
    return d


def chromium_driver(user_data_dir: str) -> Any:
    """A headless Chromium with no network of its own (no updates, sync or QUIC) and a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is missing; run `apt-get install -y chromium chromium-driver`")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never fetch a driver or browser
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="ws-chromium-")
    driver = chromium_driver(profile)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)

