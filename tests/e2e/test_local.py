"""`warmstart local up` end to end: the gate under gunicorn owning a LocalPool of real vLLM.

One `local up` for the module (its replicas start through the Instant Start standby), serving
the ngram speculative variant with a short idle timeout. In order: the speculative variant
answers; a replica killed mid-stream gives the client an error event, the lease is released and
the pool replaces it; idle → zero replicas → the next request is held with keep-alives and
answered; `local down` leaves nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.net import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VARIANT = "smollm2-135m-cpu-ngram"
IDLE_S = 8.0
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PARIS = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Local:
    home: Path
    url: str
    key: str
    proc: subprocess.Popen[str]

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "warmstart", "local", "status", "--json", "--home", str(self.home)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )
        return dict(json.loads(out.stdout))

    def events(self) -> list[dict[str, Any]]:
        return list(json.loads((self.home / "state.json").read_text())["events"])

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=self.key, max_retries=0, timeout=600)

    def gate_metric(self, name: str) -> float:
        text = httpx.get(self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))


def wait_for(pred: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    home = tmp_path_factory.mktemp("local-home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmstart", "local", "up", "--home", str(home), "--variant", VARIANT,
         "--port", str(free_port()), "--idle-timeout", str(IDLE_S), "--max-replicas", "1",
         "--keepalive-interval", "0.5", "--no-wait"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    lines: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(("URL=", "API_KEY=")):
            k, _, v = line.strip().partition("=")
            lines[k] = v
        if len(lines) == 2:
            break
    assert set(lines) == {"URL", "API_KEY"}, f"local up did not print URL/API_KEY (exit {proc.poll()})"
    assert lines["API_KEY"].startswith("ws_live_")
    info = json.loads((home / "local.json").read_text())
    assert info["url"] == lines["URL"] and info["api_key"] == lines["API_KEY"]
    assert (home / "local.json").stat().st_mode & 0o077 == 0  # the key is readable by its owner only
    yield Local(home=home, url=lines["URL"], key=lines["API_KEY"], proc=proc)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_speculative_variant_answers(local: Local) -> None:
    r = local.client().chat.completions.create(model="default", messages=PARIS, temperature=0, max_tokens=30)
    assert "Paris" in (r.choices[0].message.content or "")
    # The replica really runs ngram speculation (vLLM logs its speculative config at start).
    reps = local.status()["replicas"]
    assert reps, "a replica answered, so one must be listed"
    log = Path(reps[0]["log"]).read_text(errors="replace")
    assert "'method': 'ngram'" in log or "method='ngram'" in log or '"method": "ngram"' in log


def test_replica_killed_mid_stream(local: Local) -> None:
    client = local.client()
    # The stream itself wakes the pool if it idled to zero; once tokens flow, the one ready
    # replica is the one serving it.
    stream = client.chat.completions.create(
        model="default", messages=[SYSTEM, {"role": "user", "content": "Tell me a very long story."}],
        max_tokens=1500, stream=True, extra_body={"ignore_eos": True},
    )
    got, rep = 0, None
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
            if got == 5 and rep is None:
                rep = [r for r in local.status()["replicas"] if r["state"] == "ready"][0]
                os.killpg(int(rep["pid"]), signal.SIGKILL)  # the replica and its engine, mid-stream
    assert rep is not None
    rid = rep["id"]
    assert got >= 5
    assert "model server failed" in str(err.value)  # the gate's error event, not a hang or a cut
    # The lease was released: nothing is in flight at the gate.
    wait_for(lambda: local.gate_metric("ws_in_flight") == 0, 30, "ws_in_flight back to 0")
    assert local.gate_metric("ws_lease_leaks_total") == 0
    # The pool noticed the crash and started a replacement that became ready.
    def replaced() -> bool:
        ev = local.events()
        crashed = [e for e in ev if e["event"] == "crashed" and e.get("id") == rid]
        return bool(crashed) and any(e["event"] == "ready" and e["t"] > crashed[0]["t"] for e in ev)
    wait_for(replaced, 600, "the crashed replica's replacement to be ready")


def test_idle_to_zero_then_wake_with_keepalives(local: Local) -> None:
    wait_for(lambda: not local.status()["replicas"], 120, "the pool to scale to zero")
    # Raw SSE to see the gate's keep-alive comments while it holds the request for the wake.
    body = {"model": "default", "messages": PARIS, "temperature": 0, "max_tokens": 30, "stream": True}
    keepalives, text = 0, ""
    with httpx.stream("POST", f"{local.url}/chat/completions", json=body, timeout=600,
                      headers={"Authorization": f"Bearer {local.key}"}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith(": keep-alive"):
                keepalives += 1
            elif line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                text += (delta[0]["delta"].get("content") or "") if delta else ""
            elif line.startswith("event: error"):
                raise AssertionError(f"the woken request failed: {line}")
    assert keepalives >= 1
    assert "Paris" in text
    assert any(e["event"] == "ready" and e.get("via_standby") for e in local.events())


def test_status_then_down_leaves_nothing(local: Local) -> None:
    st = local.status()
    assert st["running"] and st["variant"] == VARIANT
    pids = [int(r["pid"]) for r in st["replicas"]] + ([int(st["standby"]["pid"])] if st["standby"] else [])
    pids.append(int(st["pid"]))
    out = subprocess.run([sys.executable, "-m", "warmstart", "local", "down", "--home", str(local.home)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    local.proc.wait(timeout=60)
    for pid in pids:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 30, f"pid {pid} to exit")
    assert not (local.home / "local.json").exists()
    assert local.status()["running"] is False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
