"""The processes a benchmark run starts (upstream, redis-server, the gate, LiteLLM, PostgreSQL)
and how their CPU time is read.

Every server binds 127.0.0.1 on a free port and runs in its own session, so stopping one stops
its whole tree (gunicorn master and workers, LiteLLM's uvicorn) and nothing else.
CPU time comes from /proc (utime + stime of a process and all its descendants): the proxies'
own cost, not the load generator's or the upstream's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            continue  # exited meanwhile
    return out


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and every live descendant."""
    total = 0
    for p in _descendants(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # Field 2 (comm) may hold spaces and parentheses: split after its closing ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat(5))
    return total / _TICK


@dataclass
class Server:
    """A started server process (tree) and the extra processes whose CPU counts as its own."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    also: list[Server] = field(default_factory=list)

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid) + sum(s.cpu_s() for s in self.also)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass


def _spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None, drop: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / f"{name}.log"
    base = {k: v for k, v in os.environ.items() if k not in drop}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=cwd or workdir, env={**base, **(env or {})})
    return proc, log_path


def wait_http(server: Server, path: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n{server.log_tail()}")
        try:
            req = urllib.request.Request(server.url + path, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.2)
    raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f}s ({last}):\n{server.log_tail()}")


def _env_py() -> dict[str, str]:
    # bench/ is not an installed package; runtime/ and warmstart/ are (editable), root on the path anyway.
    return {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def start_upstream(workdir: Path, tokens: int, interval_ms: float, first_token_ms: float) -> Server:
    port = free_port()
    proc, log = _spawn("upstream", [
        sys.executable, "-m", "tests.support.upstream", "--port", str(port), "--tokens", str(tokens),
        "--interval-ms", str(interval_ms), "--first-token-ms", str(first_token_ms)], workdir, _env_py())
    server = Server("upstream", proc, f"http://127.0.0.1:{port}", log)
    wait_http(server, "/healthz", 30)
    return server


def start_redis(workdir: Path) -> Server:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run `apt-get install -y redis-server`")
    port = free_port()
    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    proc, log = _spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(data), "--maxclients", "10000"], workdir)
    wait_for_port(port)
    return Server("redis", proc, f"redis://127.0.0.1:{port}/0", log)


def mint_key(keys_db: Path, endpoint: str) -> str:
    """A real key through the real CLI (`warmstart keys create`), as an operator would mint it."""
    out = subprocess.run(
        [sys.executable, "-m", "warmstart", "keys", "create", "--keys", f"sqlite:{keys_db}",
         "--endpoint", endpoint, "--name", "bench"],
        capture_output=True, text=True, check=True, cwd=keys_db.parent, env={**os.environ, **_env_py()})
    return out.stdout.strip()


def start_gate(name: str, workdir: Path, upstream: Server, store: str, keys_db: Path, endpoint: str,
               budget: int, workers: int, model: str, also: list[Server] | None = None) -> Server:
    """`warmstart gate --upstream ...`: the command users run (gunicorn, gevent workers, static pool).

    One upstream with --replica-cap = budget makes the plan budget (pro: 240) the only limit, the
    same as LiteLLM's per-key max_parallel_requests.
    """
    port = free_port()
    gate_dir = workdir / name
    gate_dir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "warmstart", "gate", "--upstream", upstream.url, "--port", str(port),
            "--plan", "pro", "--replica-cap", str(budget), "--store", store, "--keys", f"sqlite:{keys_db}",
            "--endpoint", endpoint, "--served-name", model]
    if store != "memory":
        argv += ["--workers", str(workers)]
    env = {**_env_py(), "PROMETHEUS_MULTIPROC_DIR": str(gate_dir / "metrics")}
    proc, log = _spawn(name, argv, workdir, env, cwd=gate_dir)
    server = Server(name, proc, f"http://127.0.0.1:{port}", log, also=also or [])
    wait_http(server, "/healthz", 60)
    return server


# -- nginx: the floor for relaying --------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream vllm {{ server {upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://vllm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(workdir: Path, upstream: Server) -> Server:
    """nginx as a plain streaming reverse proxy (`proxy_buffering off`, one worker, keep-alive to the
    upstream): no auth, no quota, no lease — the least any relay can cost, so the gate's rows have a floor."""
    binary = shutil.which("nginx")
    if binary is None:
        raise RuntimeError("nginx is not installed; run `apt-get install -y nginx-light`, or leave nginx out of --targets")
    port = free_port()
    home = workdir / "nginx"
    home.mkdir(exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workdir=home, upstream=upstream.url.removeprefix("http://"), port=port))
    proc, log = _spawn("nginx", [binary, "-c", str(conf), "-p", str(home), "-g", "daemon off;"], workdir)
    server = Server("nginx", proc, f"http://127.0.0.1:{port}", log)
    wait_http(server, "/healthz", 30)
    return server


# -- LiteLLM ------------------------------------------------------------------------------------

LITELLM_CONFIG = ROOT / "bench" / "litellm_config.yaml"  # loads bench/litellm_auth.py beside it


def litellm_bin(venv: Path) -> Path:
    path = venv / "bin" / "litellm"
    if not path.exists():
        raise RuntimeError(
            f"LiteLLM is not installed in {venv}; run `make bench-setup` "
            f"(python3 -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]'), or leave litellm out of --targets")
    return path


def start_litellm(workdir: Path, venv: Path, upstream: Server, model: str, budget: int) -> tuple[Server, str]:
    """LiteLLM's proxy on the same upstream with one virtual key limited to `budget` parallel
    requests (bench/litellm_auth.py); returns the server and that key."""
    binary = litellm_bin(venv)
    key = "sk-" + os.urandom(24).hex()
    port = free_port()
    env = {
        "BENCH_UPSTREAM_BASE": f"{upstream.url}/v1",
        "BENCH_LITELLM_MASTER_KEY": "sk-master-" + os.urandom(16).hex(),
        "BENCH_LITELLM_KEYS": hashlib.sha256(key.encode()).hexdigest(),
        "BENCH_LITELLM_MAX_PARALLEL": str(budget),
        "BENCH_MODEL": model,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_PROXY": "*",
    }
    # An operator's own LiteLLM settings (a database, a Redis cache) would change what is measured.
    drop = ("DATABASE_URL", "REDIS_HOST", "REDIS_URL", "LITELLM_MASTER_KEY")
    proc, log = _spawn("litellm", [str(binary), "--config", str(LITELLM_CONFIG), "--host", "127.0.0.1",
                                   "--port", str(port), "--num_workers", "1"], workdir, env, drop=drop)
    server = Server("litellm", proc, f"http://127.0.0.1:{port}", log)
    wait_http(server, "/health/liveliness", 180)
    return server, key
