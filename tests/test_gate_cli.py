"""`warmstart gate`: flags → a running gate (real gunicorn) that the openai client can use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from tests.support.keys import mint_key
from tests.support.net import free_port
from tests.support.upstream import UpstreamProcess


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warmstart", "gate", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_bad_flags_are_one_line_exit_2(tmp_path: Path) -> None:
    for args, needle in [
        ((), "no upstream given"),
        (("--upstream", "ftp://x"), "not an http(s) URL"),
        (("--upstream", "http://127.0.0.1:1", "--plan", "gold"), "plan='gold'"),
        (("--upstream", "http://127.0.0.1:1", "--store", "mongodb://x"), "store="),
        (("--upstream", "http://127.0.0.1:1"), "pass --served-name NAME"),
    ]:
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, r.stderr)


def test_gate_command_serves_the_upstream(tmp_path: Path, upstream: UpstreamProcess) -> None:
    port = free_port()
    keys = f"sqlite:{tmp_path / 'keys.db'}"
    key = mint_key(keys, "demo")
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmstart", "gate", "--upstream", upstream.url, "--port", str(port),
         "--endpoint", "demo", "--keys", keys, "--workers", "3"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        r = c.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                      extra_body={"ws_test": {"tokens": 2}})
        assert r.choices[0].message.content == "tok0 tok1" and r.model == upstream.model  # name asked upstream
        assert (tmp_path / ".warmstart" / f"gate-{port}.json").exists()
        c.close()  # idle keep-alive connections would hold a graceful shutdown open
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "runs 1 worker" in err  # --store memory forced one worker, and said why


def test_python_m_runtime_gate_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "gate.yaml"
    bad.write_text("endpoint: e\nserved_name: m\npool: {kind: static, upstreams: []}\n")
    for path in (bad, tmp_path / "missing.yaml"):
        r = subprocess.run([sys.executable, "-m", "runtime.gate", "--config", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: gate config"), r.stderr
