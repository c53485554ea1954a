"""Fixtures for the playground and monitoring tests: the real gate under gunicorn in front of the
deterministic upstream, and a real headless Chromium driven by Selenium.

    playground_gate   session: upstream (24 tokens, 120 ms apart, first after 1.5 s, so streaming
                      and the "waking" state are visible to a browser) + `python -m runtime.gate`
                      with 2 gevent workers, memory store, sqlite keys; .mint(...) makes keys
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
import yaml

from warmstart.testing.net import free_port, wait_for_port

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
    """A running gate (gunicorn, real socket) with its own upstream, key store and log file."""

    endpoint = "demo"
    served_name = "test-model"

    def __init__(self, workdir: Path, workers: int = 2) -> None:
        self.workdir = workdir
        self.keys_url = f"sqlite:{workdir / 'keys.db'}"
        up_port = free_port()
        self._upstream = subprocess.Popen(
            [sys.executable, "-m", "warmstart.testing.upstream", "--port", str(up_port),
             "--model", self.served_name, "--tokens", str(UPSTREAM_TOKENS),
             "--interval-ms", str(UPSTREAM_INTERVAL_MS), "--first-token-ms", str(UPSTREAM_FIRST_TOKEN_MS)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(up_port)
        config = {
            "endpoint": self.endpoint,
            "plan": "pro",
            "served_name": self.served_name,
            "store": "memory",
            "keys": self.keys_url,
            "pool": {"kind": "static", "upstreams": [f"http://127.0.0.1:{up_port}"]},
        }
        cfg_path = workdir / "gate.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log_path = workdir / "gate.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_conf makes its own
        self._gate = subprocess.Popen(
            [sys.executable, "-m", "runtime.gate", "--config", str(cfg_path),
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--graceful-timeout", "2"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        try:
            wait_for_port(self.port, timeout=60)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the gate did not start; its log:\n{self.log_path.read_text()[-3000:]}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mint(self, *, kind: str = "playground", daily_cap: int | None = None) -> str:
        from warmstart.testing.keys import mint_key

        return mint_key(self.keys_url, self.endpoint, kind=kind, daily_cap=daily_cap)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self._gate)
        _stop(self._upstream)
        self._log.close()


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
