"""A pool that takes over from a dead owner (gunicorn replaced its worker) loses no process group.

Real processes, cheap ones instead of vLLM: a previous owner (its own interpreter) starts
"replicas" in their own sessions the way the pool does — a small HTTP server answering vLLM's
in-flight metrics (a ready replica, with a child of its own like vLLM's EngineCore), a sleeper
still "launching", a "standby" — records them in the ledger and is SIGKILLed. The next LocalPool
must adopt the ready one, kill the rest (children included), and never drop a record it has not
seen go; `local down` must find what the ledger names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.gate.config import GateConfig
from runtime.local import embedded
from runtime.pool.ledger import Ledger, start_ticks
from runtime.pool.local import LocalPool
from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]

# A ready "replica": vLLM's in-flight gauges on /metrics, plus a child in its process group.
REPLICA = textwrap.dedent("""
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"vllm:num_requests_running 0\\nvllm:num_requests_waiting 0\\n"
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")
SLEEPER = "import time; time.sleep(600)"

# The previous owner: starts the groups, records them as LocalPool does, reports, then waits to die.
OWNER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from pathlib import Path
    from runtime.pool.ledger import Ledger
    home, port, replica, sleeper = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ledger = Ledger(home)
    def start(argv, **rec):
        p = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ledger.record(p.pid, owner=os.getpid(), argv=argv, **rec)
        return p
    ready = start([sys.executable, "-c", replica, str(port)], kind="replica", id="local-ready", port=port,
                  state="ready")
    grandchild = int(ready.stdout.readline())
    launching = start([sys.executable, "-c", sleeper], kind="replica", id="local-launching", port=1,
                      state="launching")
    standby = start([sys.executable, "-c", sleeper, "standby"], kind="standby")
    print(json.dumps({"ready": ready.pid, "grandchild": grandchild, "launching": launching.pid,
                      "standby": standby.pid}), flush=True)
    time.sleep(600)
""")


def gone(pid: int) -> bool:
    return start_ticks(pid) is None  # exited (or a zombie nobody reaped yet)


def wait_until(pred, what: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def config() -> GateConfig:
    return GateConfig.parse({
        "endpoint": "local", "served_name": "smollm2-135m", "replica_cap": 30,
        "pool": {"kind": "local", "variant": "smollm2-135m-cpu", "max_replicas": 2, "idle_timeout_s": 300},
    })


@pytest.fixture()
def orphans(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int], int]]:
    """A home whose previous pool owner was SIGKILLed, leaving its groups behind."""
    home, port = tmp_path / "home", free_port()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(home), str(port), REPLICA, SLEEPER],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert owner.stdout is not None
    pids = json.loads(owner.stdout.readline())
    wait_for_port(port, timeout=30)
    owner.send_signal(signal.SIGKILL)  # as gunicorn's heartbeat kill does: no atexit, no close()
    owner.wait()
    yield home, pids, port
    for pid in pids.values():  # whatever a failing test left
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_new_owner_adopts_ready_replicas_and_kills_the_rest(orphans: tuple[Path, dict[str, int], int]) -> None:
    home, pids, port = orphans
    pool = LocalPool(config(), home=home, weights_dir=home / "w", standby=False, tick_s=3600)
    try:
        snap = pool.snapshot()
        assert [r.url for r in snap.ready] == [f"http://127.0.0.1:{port}"]
        assert pool.target() == 1  # an adopted replica gets an idle window, it is not stopped at once
        for name in ("launching", "standby"):
            wait_until(lambda n=name: gone(pids[n]), f"the orphaned {name} group to be killed")
        wait_until(lambda: {r.pid for r in pool.ledger.records()} == {pids["ready"]}, "the ledger to settle")
        (rec,) = pool.ledger.records()
        assert rec.owner == os.getpid() and rec.state == "ready"
        assert not gone(pids["ready"]) and not gone(pids["grandchild"])
        assert [e["event"] for e in pool.events].count("reclaimed") == 2
    finally:
        pool.close()
    # Adopted means owned: close() stops it with its whole group, and the ledger empties.
    wait_until(lambda: gone(pids["ready"]) and gone(pids["grandchild"]), "the adopted group to stop")
    assert Ledger(home).records() == []


def test_local_down_kills_what_the_ledger_names(orphans: tuple[Path, dict[str, int], int]) -> None:
    home, pids, _ = orphans
    assert embedded.down(home) is True
    for name, pid in pids.items():
        assert gone(pid), name
    assert Ledger(home).records() == []
    assert embedded.down(home) is False


def test_records_of_a_live_owner_or_a_reused_pid_are_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ledger = Ledger(home)
    live_owned = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", SLEEPER, "stranger"], start_new_session=True)
    try:
        # Owned by a pool that still runs (this process): not the new pool's to touch.
        ledger.record(live_owned.pid, owner=os.getpid(), kind="replica", argv=live_owned.args,  # type: ignore[arg-type]
                      state="launching")
        # A record whose pid now runs something else (the argv does not match): dropped, not killed.
        ledger.record(stranger.pid, owner=2**22 + 1, kind="replica", argv=[sys.executable, "-m", "vllm"],
                      state="launching")
        pool = LocalPool(config(), home=home, weights_dir=home / "w", standby=False, tick_s=3600)
        pool.close()
        assert live_owned.poll() is None and stranger.poll() is None
        assert [r.pid for r in Ledger(home).records()] == [live_owned.pid]
    finally:
        for p in (live_owned, stranger):
            p.kill()
            p.wait()
