"""The local pool: vLLM subprocesses on this machine, with the same Flex rules as on AWS.

- `wake()` starts a replica (idempotent: it records demand for one; the monitor starts it once).
- Scale-out: `report_demand(in_flight)` → ceil(in_flight / cap) replicas, up to max_replicas.
- Flex: the pool keeps the largest demand seen in the last `idle_timeout_s`; when that falls,
  surplus replicas are drained (vLLM's own /metrics must show no running request) and stopped,
  down to zero. Idle means "no request for idle_timeout_s": the gate reports demand when requests
  arrive, and the pool polls the ready replicas' in-flight count (vLLM's /metrics, once a second)
  so a stream that is still running — and the moment it ends — count as demand too. A replica
  therefore stays idle_timeout_s after the last stream *finished*, not after it arrived.
- Crashed replicas (process exited without being asked) are dropped and replaced while demand
  lasts; three failed starts in a row stop the retries until the next wake().
- Instant Start: one standby process (runtime/replica/standby.py) waits with vLLM imported; a
  start hands it the launcher's command, and a fresh standby is started behind it.
- Every replica (and the standby) runs in its own process group, so stopping one kills its
  EngineCore and worker too. close() stops all of them and is registered with atexit. Each group
  is recorded in the ledger (runtime/pool/ledger.py, one file per group) from its start until it
  is gone, so a pool that starts after its previous owner died (gunicorn replaced the worker)
  adopts the ready replicas that owner left and kills the rest, and `warmstart local down` can
  finish the job if this process was killed outright. `state.json` is the owner's view for
  `local status`.

The pool runs inside the gate's worker (a gevent worker under gunicorn, or a plain thread
server): no call here blocks for long without yielding — CPU-bound steps (sha256 of the weights)
run on a real OS thread, and re-hydration runs in a subprocess.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from runtime.gate.config import GateConfig
from runtime.pool.base import PoolSnapshot, Replica, ReplicaPool, ReplicaState
from runtime.pool.ledger import Ledger, Record, start_ticks
from runtime.replica import readiness, weights
from runtime.replica.launcher import EngineCommand, build_command
from warmstart.spec import Variant, load_variant, replicas_needed

log = logging.getLogger("warmstart.pool.local")
T = TypeVar("T")

HOST = "127.0.0.1"
MAX_START_FAILURES = 3


def home_dir() -> Path:
    """$WARMSTART_HOME, or .warmstart/ under the checkout: logs, state, caches of the local endpoint."""
    env = os.environ.get("WARMSTART_HOME")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".warmstart"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _blocking(fn: Callable[[], T]) -> T:
    """Run CPU-bound `fn` on a real OS thread when gevent patched this process, so the worker's
    event loop (and its heartbeat) keeps running."""
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return fn()
    if not monkey.is_module_patched("threading"):
        return fn()
    return get_hub().threadpool.apply(fn)


def kill_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL what is left after `grace_s`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def owner_alive(pid: int) -> bool:
    """Whether a pool's process (a ledger record's owner) still runs; zombies do not."""
    return start_ticks(pid) is not None


class _Handle(Protocol):
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | Any: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class _Adopted:
    """A replica's leader that a previous owner of the pool started: not our child, so there is
    no exit status to collect; it is alive while the ledger record still describes it."""

    def __init__(self, rec: Record) -> None:
        self.rec = rec
        self.pid = rec.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and start_ticks(self.pid) != self.rec.start:
            self.returncode = -1  # unknown: its parent (gone) would have collected it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return -1


@dataclass
class _Proc:
    """A replica (or the standby) this pool started or adopted."""

    id: str
    proc: _Handle
    log_path: Path
    port: int = 0
    state: ReplicaState = "launching"
    via_standby: bool = False
    launched_at: float = field(default_factory=time.monotonic)
    launched_wall: float = field(default_factory=time.time)
    ready_s: float | None = None
    stopping: bool = False

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class _Standby:
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready_file: Path
    started: float = field(default_factory=time.monotonic)

    def ready(self) -> bool:
        return self.proc.poll() is None and self.ready_file.exists()


class LocalPool(ReplicaPool):
    kind = "local"

    def __init__(
        self,
        config: GateConfig,
        *,
        variant: Variant | None = None,
        home: Path | None = None,
        weights_dir: Path | None = None,
        standby: bool | None = None,
        start_timeout_s: float = 900.0,
        drain_timeout_s: float = 30.0,
        tick_s: float = 0.25,
        busy_poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pc = config.pool
        if pc.kind != "local" or not pc.variant:
            raise ValueError("LocalPool needs pool.kind='local' and pool.variant; set them in the gate config")
        self.config = config
        self.variant = variant or load_variant(pc.variant)
        if self.variant.on_gpu:
            raise ValueError(
                f"variant {self.variant.name!r} needs a GPU ({self.variant.gpu.instance_type}); "
                "the local pool runs CPU variants (smollm2-135m-cpu)"
            )
        self.cap = config.replica_cap
        self.min_replicas = pc.min_replicas
        self.max_replicas = pc.max_replicas
        self.idle_timeout_s = pc.idle_timeout_s
        self.home = home or home_dir()
        self.logs = self.home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state_path = self.home / "state.json"
        self.weights_dir = weights_dir or weights.cache_dir_for(self.variant.model)
        self.compile_cache = self.home / "cache" / self.variant.name
        if standby is None:
            standby = os.environ.get("WARMSTART_STANDBY", "1") != "0"
        self.use_standby = standby
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.tick_s = tick_s
        self.busy_poll_s = busy_poll_s
        self._clock = clock  # the Flex rule's time (monotonic); injectable for its unit tests

        self._lock = threading.RLock()
        self._replicas: dict[str, _Proc] = {}
        self._standby: _Standby | None = None
        self._demand: deque[tuple[float, int]] = deque()
        self._last_in_flight = 0  # across ready replicas, at the last poll
        self._last_poll = float("-inf")
        self._failures = 0
        self._error = ""
        self._weights_checked = False
        self._last_start_s = 40.0  # eta until a start has been measured (a cold eager start here)
        self._closed = threading.Event()
        self._wake_event = threading.Event()
        self.events: list[dict[str, Any]] = []  # replica lifecycle, for `local status` and tests
        self._owner = os.getpid()
        self.ledger = Ledger(self.home)
        self._take_over()

        atexit.register(self.close)
        self._monitor = threading.Thread(target=self._run, name="local-pool", daemon=True)
        self._monitor.start()

    # -- ReplicaPool -------------------------------------------------------------------------------
    def snapshot(self) -> PoolSnapshot:
        with self._lock:
            reps = list(self._replicas.values())
        ready = tuple(
            Replica(id=r.id, url=r.url, cap=self.cap, state="ready")
            for r in reps
            if r.state == "ready" and not r.stopping
        )
        starting = [r for r in reps if r.state in ("launching", "loading", "warming") and not r.stopping]
        detail = {"replicas": ",".join(f"{r.id}:{r.state}" for r in reps)}
        if starting:
            oldest = min(r.launched_at for r in starting)
            eta = max(1.0, self._last_start_s - (time.monotonic() - oldest))
            detail["eta_s"] = f"{eta:.0f}"
        if self._error:
            detail["error"] = self._error
        return PoolSnapshot(ready=ready, starting=len(starting), stopped=self.config.stopped, detail=detail)

    def wake(self) -> None:
        with self._lock:
            self._failures = 0
            self._error = ""
            self._demand.append((self._clock(), max(1, self.min_replicas)))
        self._wake_event.set()

    def report_demand(self, in_flight: int) -> None:
        needed = replicas_needed(in_flight, self.cap, self.min_replicas, self.max_replicas)
        with self._lock:
            self._demand.append((self._clock(), needed))
        if needed > len(self._replicas):
            self._wake_event.set()

    def close(self) -> None:
        """Stop every replica and the standby (no drain: this is shutdown)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake_event.set()
        with self._lock:
            procs = list(self._replicas.values())
            sb = self._standby
            self._replicas.clear()
            self._standby = None
        pids = [p.proc.pid for p in procs] + ([sb.proc.pid] if sb else [])
        threads = [threading.Thread(target=self._kill_and_forget, args=(pid,)) for pid in pids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in procs:
            with contextlib.suppress(Exception):
                p.proc.wait(timeout=1)
        if sb:
            with contextlib.suppress(Exception):
                sb.proc.wait(timeout=1)
            sb.ready_file.unlink(missing_ok=True)
        self._write_state()

    # -- introspection ---------------------------------------------------------------------------
    def replicas(self) -> list[dict[str, Any]]:
        with self._lock:
            reps = list(self._replicas.values())
        return [
            {
                "id": r.id, "pid": r.proc.pid, "port": r.port, "url": r.url, "state": r.state,
                "stopping": r.stopping, "via_standby": r.via_standby, "log": str(r.log_path),
                "started": r.launched_wall, "ready_s": r.ready_s,
            }
            for r in reps
        ]

    def observe_in_flight(self, in_flight: int, now: float | None = None) -> None:
        """Record the replicas' in-flight total (polled from vLLM). Work in flight is demand; so is
        the first poll that finds it gone: that poll is at or after the last completion, so the
        idle window runs at least idle_timeout_s from the moment the endpoint went quiet."""
        now = self._clock() if now is None else now
        with self._lock:
            busy = max(in_flight, self._last_in_flight)
            self._last_in_flight = in_flight
            if busy > 0:
                self._demand.append((now, replicas_needed(busy, self.cap, self.min_replicas, self.max_replicas)))

    def target(self, now: float | None = None) -> int:
        """The Flex rule: the largest demand seen within the idle window, within [min, max]."""
        now = self._clock() if now is None else now
        with self._lock:
            while self._demand and self._demand[0][0] < now - self.idle_timeout_s:
                self._demand.popleft()
            peak = max((n for _, n in self._demand), default=0)
        return max(self.min_replicas, min(self.max_replicas, peak))

    # -- the monitor -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("local pool tick failed")
            self._wake_event.wait(self.tick_s)
            self._wake_event.clear()

    def _tick(self) -> None:
        self._reap()
        if self._closed.is_set():
            return
        self._poll_in_flight()
        target = self.target()
        with self._lock:
            live = [r for r in self._replicas.values() if not r.stopping]
            can_start = self._failures < MAX_START_FAILURES
        if len(live) < target and can_start:
            for _ in range(target - len(live)):
                self._start_replica()
        elif len(live) > target:
            self._scale_in(live, len(live) - target)
        if self.use_standby:
            self._keep_standby()
        self._write_state()

    def _reap(self) -> None:
        with self._lock:
            gone = [r for r in self._replicas.values() if not r.alive()]
            for r in gone:
                del self._replicas[r.id]
        for r in gone:
            if r.stopping:
                self._event("stopped", r)  # _stop forgets it once the whole group is gone
                continue
            code = r.proc.returncode
            self._event("crashed", r, exit_code=code)
            log.warning("replica %s (pid %s) exited with %s; replacing it while demand lasts", r.id, r.proc.pid, code)
            self._kill_and_forget(r.proc.pid, grace_s=2)  # its EngineCore/worker, if they outlived it
            if r.state == "ready":
                # It was serving: replace it, and keep the replacement for an idle window even if
                # no new request arrives meanwhile (the crash is not the end of the demand).
                with self._lock:
                    live = sum(1 for x in self._replicas.values() if not x.stopping)
                    self._demand.append((self._clock(), live + 1))
            if r.state != "ready":
                with self._lock:
                    self._failures += 1
                    if self._failures >= MAX_START_FAILURES:
                        self._error = (
                            f"{self._failures} replica starts failed in a row; see {r.log_path}"
                        )

    def _poll_in_flight(self) -> None:
        now = self._clock()
        if now - self._last_poll < self.busy_poll_s:
            return
        self._last_poll = now
        with self._lock:
            ready = [r for r in self._replicas.values() if r.state == "ready" and not r.stopping]
        # An unreachable replica counts as idle: if it died, _reap replaces it on its own rule.
        total = sum(readiness.in_flight(r.url) or 0 for r in ready)
        self.observe_in_flight(total, now)

    def _scale_in(self, live: list[_Proc], surplus: int) -> None:
        # Never cut a stream: a replica vLLM reports busy keeps the demand window open instead.
        candidates = sorted((r for r in live if r.state == "ready"), key=lambda r: r.launched_at, reverse=True)
        for r in candidates[:surplus]:
            busy = readiness.in_flight(r.url)
            if busy:
                self.report_demand(busy)
                continue
            r.stopping = True
            r.state = "draining"
            self._event("draining", r)
            threading.Thread(target=self._stop, args=(r,), daemon=True).start()

    def _stop(self, r: _Proc) -> None:
        readiness.drain(r.url, timeout=self.drain_timeout_s)
        self._kill_and_forget(r.proc.pid)

    def _kill_and_forget(self, pid: int, grace_s: float = 10.0) -> None:
        # The record goes only after the group is gone: if this process dies meanwhile, the next
        # owner (or `local down`) still finds it.
        kill_group(pid, grace_s=grace_s)
        self.ledger.forget(pid)

    # -- taking over from a previous owner ---------------------------------------------------------
    def _take_over(self) -> None:
        """Adopt the ready replicas a dead previous owner left (they keep serving), kill every
        other group it recorded (starting replicas, its standby: their orders came from it)."""
        adopted = 0
        for rec in self.ledger.live():
            if owner_alive(rec.owner):
                continue  # a live pool (maybe in this very process) still owns it
            url = f"http://{HOST}:{rec.port}"
            leader_alive = start_ticks(rec.pid) == rec.start
            if (rec.kind == "replica" and rec.state == "ready" and leader_alive and rec.port
                    and len(self._replicas) < self.max_replicas and readiness.in_flight(url) is not None):
                previous, rec.owner = rec.owner, self._owner
                self.ledger.write(rec)
                r = _Proc(id=rec.id or f"local-{rec.pid}", proc=_Adopted(rec), log_path=Path(rec.log),
                          port=rec.port, state="ready", via_standby=rec.via_standby)
                self._replicas[r.id] = r
                self._event("adopted", r, previous_owner=previous)
                adopted += 1
            else:
                log.warning("killing process group %s (%s %s) left by pool owner %s",
                            rec.pid, rec.kind, rec.state, rec.owner)
                self._event("reclaimed", None, pid=rec.pid, group=rec.kind, previous_owner=rec.owner)
                threading.Thread(target=self._kill_and_forget, args=(rec.pid, 5.0), daemon=True).start()
        if adopted:
            # Adopted replicas get an idle window of their own, like a replica that just started.
            self._demand.append((self._clock(), adopted))

    # -- starting replicas -------------------------------------------------------------------------
    def _start_replica(self) -> None:
        port = _free_port()
        rid = f"local-{uuid.uuid4().hex[:8]}"
        cmd = build_command(
            self.variant, model_dir=self.weights_dir, host=HOST, port=port, cache_dir=self.compile_cache
        )
        with self._lock:
            # A standby still importing is used too: the order waits in its stdin pipe, and it
            # is already further along than a cold process would be.
            sb = self._standby if (self._standby and self._standby.proc.poll() is None) else None
            if sb is not None:
                self._standby = None
        if sb is not None:
            sb.ready_file.unlink(missing_ok=True)
            proc, log_path, via = sb.proc, sb.log_path, True
            self.ledger.update(proc.pid, kind="replica", id=rid, port=port, via_standby=True)
        else:
            log_path = self.logs / f"{rid}.log"
            proc = self._popen(list(cmd.argv), cmd.env, log_path, stdin=subprocess.DEVNULL,
                               kind="replica", id=rid, port=port)
            via = False
        rep = _Proc(id=rid, proc=proc, log_path=log_path, port=port, via_standby=via)
        with self._lock:
            self._replicas[rid] = rep
        self._event("launching", rep)
        threading.Thread(target=self._bring_up, args=(rep, cmd, sb), daemon=True).start()

    def _bring_up(self, rep: _Proc, cmd: EngineCommand, sb: _Standby | None) -> None:
        try:
            self._check_weights()
            if sb is not None:
                order = json.dumps({"argv": list(cmd.argv), "env": cmd.env}) + "\n"
                assert sb.proc.stdin is not None
                sb.proc.stdin.write(order.encode())
                sb.proc.stdin.flush()
                sb.proc.stdin.close()
            rep.state = "loading"
            readiness.wait_ready(rep.url, self.variant.served_name, timeout=self.start_timeout_s, alive=rep.alive)
        except Exception as e:
            if not rep.stopping and not self._closed.is_set():
                log.warning("replica %s failed to start: %s (log: %s)", rep.id, e, rep.log_path)
                self._event("failed", rep, error=str(e))
                with self._lock:
                    self._failures += 1
                    if self._failures >= MAX_START_FAILURES:
                        self._error = f"{self._failures} replica starts failed in a row: {e}"
            kill_group(rep.proc.pid, grace_s=2)
            return
        rep.ready_s = time.monotonic() - rep.launched_at
        rep.state = "ready"
        self.ledger.update(rep.proc.pid, state="ready")
        with self._lock:
            self._failures = 0
            self._error = ""
            self._last_start_s = rep.ready_s
            # The idle window starts when the replica can serve, not when it was asked for: a start
            # slower than idle_timeout_s must not be stopped the moment it is ready.
            live = sum(1 for r in self._replicas.values() if not r.stopping)
            self._demand.append((self._clock(), live))
        self._event("ready", rep, ready_s=round(rep.ready_s, 2))
        self._write_state()

    def _check_weights(self) -> None:
        """Verify the cache against its manifest (sha256 on the first start, sizes after); a
        broken cache is re-hydrated from the variant's source before vLLM may read it."""
        deep = not self._weights_checked
        verdict = _blocking(lambda: weights.verify(self.weights_dir, deep=deep))
        if verdict.ok:
            self._weights_checked = True
            return
        log.warning("weight cache %s failed verification (%s); re-hydrating", self.weights_dir, verdict)
        self._event("rehydrating", None, problems=list(verdict.problems))
        out = subprocess.run(
            [sys.executable, "-m", "runtime.replica.weights", "--source", self.variant.model,
             "--dest", str(self.weights_dir), "--model", self.variant.model],
            capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"re-hydrating {self.weights_dir} failed: {out.stderr.strip()[-500:]}")
        self._weights_checked = True
        self._event("rehydrated", None)

    def _keep_standby(self) -> None:
        with self._lock:
            sb = self._standby
            if sb is not None and sb.proc.poll() is not None:
                log.warning("standby exited with %s (log: %s)", sb.proc.returncode, sb.log_path)
                threading.Thread(target=self._kill_and_forget, args=(sb.proc.pid, 2.0), daemon=True).start()
                self._standby = sb = None
            if sb is not None or self._closed.is_set():
                return
            name = f"standby-{uuid.uuid4().hex[:8]}"
            log_path = self.logs / f"{name}.log"
            ready_file = self.logs / f"{name}.ready"
            # The command a wake will carry, but for its port: the standby warms up its tokenizer,
            # chat template and files under exactly these flags.
            expected = build_command(self.variant, model_dir=self.weights_dir, host=HOST, port=0,
                                     cache_dir=self.compile_cache)
            proc = self._popen(
                [sys.executable, "-m", "runtime.replica.standby", "--ready-file", str(ready_file),
                 "--prewarm-argv", json.dumps(list(expected.argv))],
                expected.env, log_path, stdin=subprocess.PIPE, kind="standby",
            )
            self._standby = _Standby(proc=proc, log_path=log_path, ready_file=ready_file)

    def _popen(self, argv: list[str], env: dict[str, str], log_path: Path, stdin: int, *,
               kind: str, **record: Any) -> subprocess.Popen[bytes]:
        out: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; we close our copy
        try:
            proc = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]),
            )
        finally:
            out.close()
        self.ledger.record(proc.pid, owner=self._owner, kind=kind, argv=argv, log=str(log_path), **record)
        return proc

    # -- state for `warmstart local status|down` ----------------------------------------------------
    def _event(self, kind: str, rep: _Proc | None, **extra: Any) -> None:
        ev = {"t": round(time.time(), 3), "event": kind, **extra}
        if rep is not None:
            ev.update(id=rep.id, pid=rep.proc.pid, via_standby=rep.via_standby)
        with self._lock:
            self.events.append(ev)
            del self.events[:-200]
        log.info("replica event %s", ev)

    def _write_state(self) -> None:
        with self._lock:
            sb = self._standby
            state = {
                "pid": os.getpid(),
                "variant": self.variant.name,
                "closed": self._closed.is_set(),
                "target": self.target(),
                "error": self._error,
                "replicas": self.replicas(),
                "standby": None if sb is None else {"pid": sb.proc.pid, "ready": sb.ready(), "log": str(sb.log_path)},
                "events": self.events[-50:],
            }
            # Under the lock, and one temp name per thread: the monitor and close() both write.
            tmp = self.state_path.with_suffix(f".tmp.{os.getpid()}.{threading.get_ident()}")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(self.state_path)
