"""The embedded default: the gate + a local pool of real vLLM replicas on one machine, no cloud.

    up()   weights cache (converted once) → gate config → an API key in a sqlite store →
           the gate under gunicorn (one gevent worker, which owns the LocalPool) →
           optionally the first replica warmed → .warmstart/local.json {url, api_key, playground, ...}
           (an API key and a playground key, reused from .warmstart/local-keys.json while still active)
    down() the gate's process group (its worker's pool stops every replica on exit), then every
           process group state.json or the pool's ledger (<home>/procs/) still names (if the gate
           was killed outright), then the file.

Everything binds 127.0.0.1. The admission store is in memory (one gate process), keys are in
sqlite under the home directory, logs under <home>/logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.pool.ledger import Ledger
from runtime.pool.local import home_dir, kill_group
from runtime.replica import weights
from warmstart.errors import OperationError
from warmstart.spec import Variant, load_variant

ENDPOINT = "local"
DEFAULT_VARIANT = "smollm2-135m-cpu"
DEFAULT_PORT = 8080
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LocalSettings:
    variant: str = DEFAULT_VARIANT
    port: int = DEFAULT_PORT
    home: Path | None = None
    idle_timeout_s: float = 300.0
    max_replicas: int = 2
    standby: bool = True
    hold_timeout_s: float = 300.0  # a cold CPU start can take minutes on a busy laptop
    keepalive_interval_s: float = 5.0

    @property
    def home_dir(self) -> Path:
        return self.home or home_dir()


def info_path(home: Path) -> Path:
    return home / "local.json"


def read_info(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(info_path(home).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As gunicorn binds: connections of a gate that just stopped (TIME_WAIT) must not make
        # `local up` right after `local down` refuse the port; a live listener still does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prepare_weights(variant: Variant, progress: Progress) -> Path:
    dest = weights.cache_dir_for(variant.model)
    if (dest / weights.MANIFEST).exists():
        progress(f"checking weight cache {dest} (sha256 of every file)")
    return weights.ensure(variant.model, dest, model=variant.model, progress=progress)


def gate_config(s: LocalSettings, variant: Variant) -> dict[str, Any]:
    home = s.home_dir
    return {
        "endpoint": ENDPOINT,
        "plan": "pro",
        "served_name": variant.served_name,
        "replica_cap": variant.target_concurrency,
        "store": "memory",
        "keys": f"sqlite:{home / 'keys.db'}",
        "pool": {
            "kind": "local",
            "variant": variant.name,
            "min_replicas": 0,
            "max_replicas": s.max_replicas,
            "idle_timeout_s": s.idle_timeout_s,
        },
        "hold_timeout_s": s.hold_timeout_s,
        "keepalive_interval_s": s.keepalive_interval_s,
    }


# kind -> (plan, name). The playground key gets the starter plan's daily cap (the playground's
# contract), the API key the endpoint's plan.
LOCAL_KEYS: dict[str, tuple[str, str]] = {
    "api": ("pro", "local up"),
    "playground": ("starter", "local up playground"),
}


def keys_path(home: Path) -> Path:
    """The keys `up` minted, kept across `down` (local.json is not) so a restart reuses them."""
    return home / "local-keys.json"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    # Holds live keys: created 0600 and re-chmodded in case an older file was looser.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)


def local_keys(keys_uri: str, home: Path, now: float | None = None) -> dict[str, str]:
    """One key per kind in LOCAL_KEYS: the one from the last `up` if the store still has it active,
    for this endpoint and of that kind; a fresh one otherwise (revoked, expired, deleted, new db)."""
    from runtime.gate.keys import hash_key, is_well_formed, open_key_store

    now = time.time() if now is None else now
    try:
        previous = json.loads(keys_path(home).read_text())
    except (FileNotFoundError, ValueError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    store = open_key_store(keys_uri)
    try:
        keys: dict[str, str] = {}
        for kind, (plan, name) in LOCAL_KEYS.items():
            old = previous.get(kind)
            record = store.get(hash_key(old)) if isinstance(old, str) and is_well_formed(old) else None
            if (record is not None and record.kind == kind and record.endpoint == ENDPOINT
                    and record.state(now) == "active"):
                keys[kind] = str(old)
            else:
                keys[kind], _ = store.create(endpoint=ENDPOINT, kind=kind, plan=plan, name=name)
    finally:
        store.close()
    _write_private(keys_path(home), keys)
    return keys


def playground_url(port: int, key: str) -> str:
    # The key rides in the fragment, which browsers never send to the server.
    return f"http://127.0.0.1:{port}/playground#key={key}"


def _wait_gate(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise OperationError(f"the gate exited with {proc.returncode}; its log ({log_path}):\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise OperationError(f"the gate at {url} did not answer /healthz within {timeout:.0f}s; see {log_path}")


def _pool_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads((home / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def warm_first_replica(url: str, key: str, served: str, home: Path, progress: Progress, timeout: float) -> float:
    """One request through the gate: it wakes the pool; progress shows the replica's state."""
    import threading

    body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                result["status"] = r.status
        except urllib.error.HTTPError as e:
            result["error"] = f"HTTP {e.code}: {e.read()[:300]!r}"
        except OSError as e:
            result["error"] = str(e)

    t0 = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    last = ""
    while t.is_alive():
        reps = _pool_state(home).get("replicas", [])
        states = ", ".join(f"{r['id']} {r['state']}" for r in reps) or "starting"
        line = f"first replica: {states} ({time.monotonic() - t0:.0f}s)"
        if line.split(" (")[0] != last:
            progress(line)
            last = line.split(" (")[0]
        t.join(2.0)
    if "error" in result:
        raise OperationError(f"the first request through the gate failed: {result['error']}")
    return time.monotonic() - t0


def up(s: LocalSettings, progress: Progress = print, *, wait_ready: bool = True) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Start the local endpoint; returns (info, gate process). The caller owns the process."""
    home = s.home_dir
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    existing = read_info(home)
    if existing and _pid_alive(int(existing.get("pid", 0))):
        raise OperationError(
            f"a local endpoint is already running (pid {existing['pid']}, {existing.get('url')}); "
            "run `warmstart local down` first"
        )
    if not _port_free(s.port):
        raise OperationError(f"port {s.port} on 127.0.0.1 is in use; pass --port with a free port")
    variant = load_variant(s.variant)
    if variant.on_gpu:
        raise OperationError(
            f"variant {variant.name!r} needs a GPU ({variant.gpu.instance_type}); "
            "use a CPU variant locally (smollm2-135m-cpu) or deploy it with `pulumi up`"
        )
    prepare_weights(variant, progress)

    cfg = gate_config(s, variant)
    cfg_path = home / "gate.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    keys = local_keys(cfg["keys"], home)
    key = keys["api"]

    log_path = home / "logs" / "gate.log"
    progress(f"starting the gate on 127.0.0.1:{s.port} (log: {log_path})")
    env = {
        **os.environ,
        "WARMSTART_HOME": str(home),
        "WARMSTART_STANDBY": "1" if s.standby else "0",
        "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"),
    }
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.gate", "--config", str(cfg_path), "--bind", f"127.0.0.1:{s.port}",
             "--workers", "1", "--graceful-timeout", "5"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
    url = f"http://127.0.0.1:{s.port}"
    info = {
        "url": f"{url}/v1", "api_key": key, "playground": playground_url(s.port, keys["playground"]),
        "pid": proc.pid, "port": s.port, "home": str(home),
        "variant": variant.name, "served_name": variant.served_name, "config": str(cfg_path),
        "started": time.time(),
    }
    _write_private(info_path(home), info)
    try:
        _wait_gate(url, proc, log_path)
        if wait_ready:
            took = warm_first_replica(url, key, variant.served_name, home, progress, timeout=s.hold_timeout_s + 60)
            progress(f"first replica ready and answering ({took:.0f}s)")
    except BaseException:
        down(home)
        raise
    return info, proc


def down(home: Path | None = None, progress: Progress = lambda _m: None) -> bool:
    """Stop the local endpoint and everything it started. True if something was running."""
    home = home or home_dir()
    info = read_info(home)
    found = False
    if info and info.get("pid"):
        pid = int(info["pid"])
        if _pid_alive(pid):
            found = True
            progress(f"stopping the gate (pid {pid}) and its replicas")
            kill_group(pid, grace_s=20)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
    # Whatever the pool's state file still names (the gate may have been killed outright).
    state = _pool_state(home)
    pids = [int(r["pid"]) for r in state.get("replicas", []) if r.get("pid")]
    if state.get("standby"):
        pids.append(int(state["standby"]["pid"]))
    for pid in pids:
        if _pid_alive(pid):
            found = True
            progress(f"stopping leftover replica process group {pid}")
            kill_group(pid, grace_s=5)
    # Every group any pool owner recorded and did not see go (checked to still be ours first).
    if (home / "procs").is_dir():
        ledger = Ledger(home)
        for rec in ledger.live():
            found = True
            progress(f"stopping leftover {rec.kind} process group {rec.pid}")
            kill_group(rec.pid, grace_s=5)
            ledger.forget(rec.pid)
    info_path(home).unlink(missing_ok=True)
    return found


def status(home: Path | None = None) -> dict[str, Any]:
    """What `warmstart local status` shows: the gate, each replica's state and in-flight count."""
    from runtime.replica.readiness import in_flight

    home = home or home_dir()
    info = read_info(home)
    running = bool(info and _pid_alive(int(info.get("pid", 0))))
    state = _pool_state(home) if running else {}
    reps = []
    for r in state.get("replicas", []):
        r = dict(r)
        r["in_flight"] = in_flight(r["url"]) if r.get("state") == "ready" else None
        reps.append(r)
    return {
        "running": running,
        "url": info.get("url") if info else None,
        "variant": (info or {}).get("variant"),
        "pid": (info or {}).get("pid"),
        "target": state.get("target"),
        "error": state.get("error") or None,
        "replicas": reps,
        "standby": state.get("standby"),
        "events": state.get("events", [])[-10:],
    }


def forward_signals(proc: subprocess.Popen[bytes], home: Path, progress: Progress) -> int:
    """Block on the gate; Ctrl-C or SIGTERM stops everything (the `up` foreground mode)."""
    stop = {"sig": 0}

    def handler(signum: int, _frame: Any) -> None:
        stop["sig"] = signum

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while proc.poll() is None and not stop["sig"]:
            time.sleep(0.5)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    if stop["sig"]:
        progress("stopping (signal received)")
    else:
        progress(f"the gate exited with {proc.returncode}; stopping the rest")
    down(home, progress)
    with contextlib.suppress(Exception):
        proc.wait(timeout=5)
    return 0 if stop["sig"] else 1
