"""The gate benchmark: what the gate adds to a stream, next to the direct path and LiteLLM's proxy.

    python -m bench.gate              # full run (about 6 minutes), prints the table
    python -m bench.gate --quick      # about 2 minutes, shorter windows, one round
    make bench                        # the same as the first line, after `make bench-setup`

One run, one machine, one deterministic upstream (tests.support.upstream: 16 tokens, 25 ms
apart, first after 25 ms, i.e. a 40 tok/s stream), five paths to it:

    direct        the upstream itself: the baseline every other row is compared with
    nginx         nginx as a plain streaming reverse proxy (`proxy_buffering off`, one worker): the
                  floor, what moving the bytes costs with nothing decided per request
    gate-memory   `warmstart gate --upstream U --store memory` (gunicorn, 1 gevent worker)
    gate-redis    `warmstart gate --upstream U --store redis://…` against a real redis-server
    litellm       LiteLLM's proxy (its own venv, .venv-bench) with a virtual key limited to the same
                  240 parallel requests (bench/litellm_config.yaml, bench/litellm_auth.py)

The gate's key is minted by `warmstart keys create`; the plan is pro (budget 240) and the one
upstream's --replica-cap is 240, so the budget is the only limit, like LiteLLM's per-key
max_parallel_requests. At each concurrency (1, 64, 240 streaming clients) every path gets the same
window, in rotating order, over several rounds, so slow drift of a shared machine spreads over all
of them. The load generator (bench/_load.py) runs in its own process; CPU is read from /proc for
each proxy's process tree (and the gate's redis-server) over each window.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import _procs, _report
from bench._procs import Server

TARGETS = ("direct", "nginx", "gate-memory", "gate-redis", "litellm")
MODEL = "test-model"
ENDPOINT = "bench"


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels {text!r} is not a list of integers; use e.g. 1,64,240") from None
    if not levels or any(not 1 <= c <= 1000 for c in levels):
        raise argparse.ArgumentTypeError(f"--levels {text!r}: each level must be 1..1000")
    return levels


def _targets(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in TARGETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--targets {text!r}: choose from {', '.join(TARGETS)}")
    if "direct" not in names:
        names.insert(0, "direct")  # every row is relative to it
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows, one round (about 2 minutes)")
    p.add_argument("--targets", type=_targets, default=list(TARGETS), help=f"subset of {','.join(TARGETS)}")
    p.add_argument("--levels", type=_levels, default=[1, 64, 240], help="concurrent streaming clients")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per path per level per round (default 8; 3 with --quick); level 1 gets twice it")
    p.add_argument("--rounds", type=int, default=None, help="rounds per level (default 2; 1 with --quick)")
    p.add_argument("--budget", type=int, default=240, help="parallel-request budget of the key (pro plan: 240)")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--interval-ms", type=float, default=25.0)
    p.add_argument("--first-token-ms", type=float, default=25.0)
    p.add_argument("--gate-workers", type=int, default=1,
                   help="gunicorn workers of gate-redis (gate-memory is always 1: its state is in-process)")
    p.add_argument("--bench-venv", type=Path, default=_procs.ROOT / ".venv-bench", help="LiteLLM's venv")
    p.add_argument("--json", type=Path, help="write every number (and the run's metadata) here")
    p.add_argument("--markdown", type=Path, help="write the table and the verdicts here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    a = p.parse_args(argv)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 8.0)
    a.rounds = a.rounds if a.rounds is not None else (1 if a.quick else 2)
    if a.duration <= 0 or a.rounds < 1:
        p.error("--duration must be > 0 and --rounds ≥ 1")
    return a


def run_load(url: str, key: str, concurrency: int, duration: float, ramp: float = 0.0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench._load", "--url", f"{url}/v1", "--key", key, "--model", MODEL,
            "--concurrency", str(concurrency), "--duration", str(duration), "--timeout", "60",
            "--ramp", str(ramp)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, cwd=_procs.ROOT,
                         env={**os.environ, "PYTHONPATH": str(_procs.ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _upstream_stats(upstream: Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"{upstream.url}/_stats", timeout=10) as r:
        data: dict[str, Any] = json.load(r)
    data.pop("last_body", None)
    return data


def measure(a: argparse.Namespace, workdir: Path, log: Any) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        upstream = _procs.start_upstream(workdir, a.tokens, a.interval_ms, a.first_token_ms)
        servers.append(upstream)
        paths: dict[str, tuple[Server | None, str]] = {"direct": (None, "none")}
        keys_db = workdir / "keys.db"
        key = "none"
        if any(t.startswith("gate-") for t in a.targets):
            key = _procs.mint_key(keys_db, ENDPOINT)
        if "nginx" in a.targets:
            ng = _procs.start_nginx(workdir, upstream)
            servers.append(ng)
            paths["nginx"] = (ng, "none")
        if "gate-memory" in a.targets:
            g = _procs.start_gate("gate-memory", workdir, upstream, "memory", keys_db, ENDPOINT, a.budget, 1, MODEL)
            servers.append(g)
            paths["gate-memory"] = (g, key)
        if "gate-redis" in a.targets:
            redis = _procs.start_redis(workdir)
            servers.append(redis)
            g = _procs.start_gate("gate-redis", workdir, upstream, redis.url, keys_db, ENDPOINT, a.budget,
                                  a.gate_workers, MODEL, also=[redis])
            servers.append(g)
            paths["gate-redis"] = (g, key)
        if "litellm" in a.targets:
            log(f"starting LiteLLM from {a.bench_venv} (about 20 s) …")
            lt, lkey = _procs.start_litellm(workdir, a.bench_venv, upstream, MODEL, a.budget)
            servers.append(lt)
            paths["litellm"] = (lt, lkey)

        # Warm every path (connections, key caches, lazily imported code) outside the measurement.
        for name in a.targets:
            proxy, key = paths[name]
            run_load((proxy or upstream).url, key, min(8, max(a.levels)), 1.0 if a.quick else 2.0)

        # What each proxy burns doing nothing (gunicorn heartbeats, the lease keeper, LiteLLM's
        # background tasks), taken off each window so CPU per request is the requests' own.
        idle_s = 1.0 if a.quick else 3.0
        proxies = {n: p for n, (p, _) in paths.items() if p is not None}
        before = {n: p.cpu_s() for n, p in proxies.items()}
        time.sleep(idle_s)
        idle_rate = {n: max(0.0, (p.cpu_s() - before[n]) / idle_s) for n, p in proxies.items()}
        log("idle CPU: " + ", ".join(f"{n} {r * 1000:.0f} ms/s" for n, r in idle_rate.items()))

        # One stream's length: the load generator spreads its clients' starts over it (see _load.py).
        ramp = (a.first_token_ms + a.tokens * a.interval_ms) / 1000
        windows: dict[tuple[str, int], _report.Window] = {}
        for level in a.levels:
            duration = a.duration * (2 if level == 1 else 1)
            for rnd in range(a.rounds):
                order = a.targets[rnd % len(a.targets):] + a.targets[:rnd % len(a.targets)]
                for name in order:
                    proxy, key = paths[name]
                    cpu0 = proxy.cpu_s() if proxy else None
                    up0 = upstream.cpu_s()
                    t0 = time.monotonic()
                    data = run_load((proxy or upstream).url, key, level, duration, ramp)
                    cpu = None
                    if proxy and cpu0 is not None:
                        cpu = max(0.0, proxy.cpu_s() - cpu0 - idle_rate[name] * (time.monotonic() - t0))
                    w = windows.setdefault((name, level), _report.Window(name, level))
                    w.add(data["requests"], data["wall_s"], cpu, upstream.cpu_s() - up0)
                    bad = sum(1 for s in data["requests"] if int(s[3]) != 200)
                    log(f"  {level:>4} streams  round {rnd + 1}  {name:<12} {len(data['requests']):>6} requests"
                        f"{f'  ({bad} errors)' if bad else ''}")
        rows = _report.compare([_report.summarize(windows[(t, c)]) for c in a.levels for t in a.targets])
        return {"rows": rows, "upstream_stats": _upstream_stats(upstream),
                "idle_cpu_ms_per_s": {n: round(r * 1000, 1) for n, r in idle_rate.items()}}
    finally:
        for s in reversed(servers):
            s.stop()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    command = "python -m bench.gate " + shlex.join(sys.argv[1:] if argv is None else argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load0 = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        workdir = Path(tempfile.mkdtemp(prefix="ws-bench-")) if a.keep else Path(tmp)
        log(f"bench: {', '.join(a.targets)} × {a.levels} streams, {a.rounds} round(s) of {a.duration:g} s; "
            f"work dir {workdir}")
        result = measure(a, workdir, log)
    rows: list[_report.Row] = result["rows"]
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": command, "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(), "python": platform.python_version(), "loadavg_before": load0,
        "loadavg_after": os.getloadavg(), "elapsed_s": round(time.monotonic() - t0, 1),
        "upstream": {"tokens": a.tokens, "interval_ms": a.interval_ms, "first_token_ms": a.first_token_ms},
        "budget": a.budget, "gate_workers": a.gate_workers, "rounds": a.rounds, "duration_s": a.duration,
        "litellm": _litellm_version(a.bench_venv) if "litellm" in a.targets else None,
        "upstream_stats": result["upstream_stats"], "idle_cpu_ms_per_s": result["idle_cpu_ms_per_s"],
    }
    lines = [
        f"{meta['date']} · `{command}` · {meta['cpus']} CPUs ({meta['cpu_model']}), 1-min load average "
        f"{load0[0]:.1f} before, {meta['loadavg_after'][0]:.1f} after · upstream: {a.tokens} tokens, {a.interval_ms:g} ms apart, first after "
        f"{a.first_token_ms:g} ms" + (f" · LiteLLM {meta['litellm']}" if meta["litellm"] else ""),
        "",
        _report.table(rows),
        "",
        *(f"- {v}" for v in _report.verdicts(rows, max(a.levels))),
    ]
    text = "\n".join(lines)
    print(text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "rows": _report.to_json(rows)}, indent=2))
    log(f"bench: done in {meta['elapsed_s']} s")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _litellm_version(venv: Path) -> str | None:
    try:
        out = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
