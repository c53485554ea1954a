"""Cold start of a local replica, naive vs Instant Start, and streaming throughput direct vs the gate.

    .venv/bin/python -m bench.coldstart --runs 3            # the table in docs/benchmarks.md
    .venv/bin/python -m bench.coldstart --runs 1 --no-throughput

Wake to first token, split into phases from the replica's own log lines (timestamped as they are
read from its pipe, so the split has ~ms resolution even though vLLM's log has seconds):

    imports        wake → vLLM's API server has parsed its args (process start + Python imports)
    engine procs   → the worker starts loading (EngineCore and worker processes started)
    weight load    → "Loading weights took"
    engine init    → "init engine ... took" (profile run, KV cache, warm-up of the model)
    API up         → the HTTP server accepts (/health answers)
    first token    → the first streamed token of a chat request sent at wake (held until up)

naive:   a fresh `python -m vllm.entrypoints.openai.api_server` (the launcher's argv).
standby: runtime/replica/standby.py, already importing-complete, handed the same argv.

Each run is median-of-N. The load average is printed with the results: on a shared machine
the absolute numbers move with it; the naive/standby ratio, measured back to back, less so.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.pool.local import kill_group
from runtime.replica import readiness
from runtime.replica.launcher import EngineCommand, build_command
from tests.support.net import free_port
from tests.support.vllm_server import local_model_dir
from warmstart.spec import load_variant

ROOT = Path(__file__).resolve().parent.parent
MARKERS = (
    ("imports", "non-default args"),
    ("engine procs", "Starting to load model"),
    ("weight load", "Loading weights took"),
    ("engine init", "init engine"),
    # finer points, printed per run (not table rows)
    ("config resolved", "Resolved architecture"),
    ("EngineCore up", "Initializing a V1 LLM engine"),
    ("engine client ready", "Supported tasks"),
    ("app built", "Starting vLLM server on"),
)
PHASES = ("imports", "engine procs", "weight load", "engine init", "API up", "first token")
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@dataclass
class Start:
    kind: str
    t0: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    standby_import_s: float | None = None

    def phases(self) -> dict[str, float]:
        out, prev = {}, self.t0
        for name in PHASES:
            t = self.marks.get(name)
            if t is None:
                continue
            out[name] = t - prev
            prev = t
        out["total"] = prev - self.t0
        return out


def _pump(proc: subprocess.Popen[bytes], start: Start, log: Path) -> None:
    assert proc.stdout is not None
    with log.open("ab") as f:
        for raw in proc.stdout:
            now = time.monotonic()
            f.write(raw)
            line = raw.decode(errors="replace")
            if not start.t0:
                continue  # a standby's own start (its prewarm logs config lines too): not the wake
            for name, marker in MARKERS:
                if marker in line and name not in start.marks:
                    start.marks[name] = now


def _first_token(url: str, served: str) -> float:
    body = json.dumps({"model": served, "messages": [SYSTEM, {"role": "user", "content": "Hi"}],
                       "max_tokens": 8, "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                return time.monotonic()
    raise RuntimeError("no token streamed")


def _wait_and_ask(proc: subprocess.Popen[bytes], url: str, served: str, start: Start) -> None:
    while not readiness.healthy(url, timeout=1):
        if proc.poll() is not None:
            raise RuntimeError(f"{start.kind} replica exited with {proc.returncode}")
        time.sleep(0.02)
    start.marks["API up"] = time.monotonic()
    start.marks["first token"] = _first_token(url, served)


def _spawn(argv: list[str], env: dict[str, str], stdin: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=stdin, start_new_session=True, cwd=str(ROOT))


def naive(cmd: EngineCommand, url: str, served: str, work: Path, keep: bool = False) -> tuple[Start, Any]:
    s = Start("naive")
    s.t0 = time.monotonic()
    proc = _spawn(list(cmd.argv), cmd.env, subprocess.DEVNULL)
    threading.Thread(target=_pump, args=(proc, s, work / f"naive-{proc.pid}.log"), daemon=True).start()
    try:
        _wait_and_ask(proc, url, served, s)
    finally:
        if not keep:
            kill_group(proc.pid)
    return s, proc


def standby(cmd: EngineCommand, url: str, served: str, work: Path, prewarm: bool = True) -> Start:
    s = Start("standby" if prewarm else "standby-noprewarm")
    ready = work / f"standby-{time.monotonic_ns()}.ready"
    t_spawn = time.monotonic()
    argv = [sys.executable, "-m", "runtime.replica.standby", "--ready-file", str(ready)]
    if prewarm:
        argv += ["--prewarm-argv", json.dumps(list(cmd.argv))]  # what the local pool does
    proc = _spawn(argv, cmd.env, subprocess.PIPE)
    threading.Thread(target=_pump, args=(proc, s, work / f"standby-{proc.pid}.log"), daemon=True).start()
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"standby exited with {proc.returncode}")
            time.sleep(0.05)
        s.standby_import_s = time.monotonic() - t_spawn
        time.sleep(1.0)  # idle, as a standby is when a request arrives
        assert proc.stdin is not None
        s.t0 = time.monotonic()
        proc.stdin.write((json.dumps({"argv": list(cmd.argv), "env": cmd.env}) + "\n").encode())
        proc.stdin.close()
        _wait_and_ask(proc, url, served, s)
    finally:
        kill_group(proc.pid)
    return s


def _median_table(starts: list[Start]) -> dict[str, float]:
    keys = [*PHASES, "total"]
    return {k: statistics.median([st.phases().get(k, 0.0) for st in starts]) for k in keys}


# -- throughput ---------------------------------------------------------------------------------
def _stream_tokens(base_url: str, key: str | None, served: str, max_tokens: int) -> int:
    body = json.dumps({"model": served, "messages": [SYSTEM, {"role": "user", "content": "Tell me a story."}],
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{base_url}/chat/completions", data=body, headers=headers)
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for line in r:
            if line.startswith(b"data: {") and b'"usage":{' in line:
                usage = json.loads(line[6:]).get("usage") or {}
                tokens = int(usage.get("completion_tokens") or tokens)
    return tokens


def throughput(base_url: str, key: str | None, served: str, streams: int, max_tokens: int) -> float:
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(streams) as ex:
        total = sum(ex.map(lambda _i: _stream_tokens(base_url, key, served, max_tokens), range(streams)))
    return total / (time.monotonic() - t0)


def run_throughput(vllm_url: str, served: str, work: Path, max_tokens: int) -> dict[str, float]:
    from tests.support.gate_server import GateServer, gate_config

    keys = f"sqlite:{work / 'keys.db'}"
    cfg = gate_config([vllm_url], keys, served_name=served, hold_timeout_s=60)
    gate = GateServer(work, cfg, workers=1)
    try:
        key = gate.mint()
        out = {}
        for n in (1, 8):
            throughput(f"{vllm_url}/v1", None, served, 1, 16)  # warm the path
            out[f"direct x{n}"] = throughput(f"{vllm_url}/v1", None, served, n, max_tokens)
            out[f"gate x{n}"] = throughput(gate.base_url, key, served, n, max_tokens)
        return out
    finally:
        gate.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--variant", default="smollm2-135m-cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)

    variant = load_variant(a.variant)
    model_dir = local_model_dir()
    work = Path(tempfile.mkdtemp(prefix="ws-coldstart-"))
    load_before = os.getloadavg()
    results: dict[str, Any] = {"variant": variant.name, "runs": a.runs, "cpus": os.cpu_count()}
    naive_runs: list[Start] = []
    standby_runs: list[Start] = []
    for i in range(a.runs):
        for kind in ("naive", "standby"):  # interleaved: both see the same background load
            port = free_port()
            cmd = build_command(variant, model_dir=model_dir, host="127.0.0.1", port=port,
                                cache_dir=work / "cache")
            url = f"http://127.0.0.1:{port}"
            if kind == "naive":
                st, _ = naive(cmd, url, variant.served_name, work)
                naive_runs.append(st)
            else:
                st = standby(cmd, url, variant.served_name, work)
                standby_runs.append(st)
            print(f"run {i + 1} {kind}: " + ", ".join(f"{k} {v:.2f}s" for k, v in st.phases().items())
                  + (f" (standby imports beforehand {st.standby_import_s:.1f}s)" if st.standby_import_s else ""),
                  flush=True)
            print("    log marks after wake: " + ", ".join(
                f"{k} +{v - st.t0:.2f}s" for k, v in sorted(st.marks.items(), key=lambda kv: kv[1])), flush=True)
    results["naive"] = _median_table(naive_runs)
    results["standby"] = _median_table(standby_runs)
    results["standby_import_s"] = statistics.median([s.standby_import_s or 0 for s in standby_runs])

    if not a.no_throughput:
        port = free_port()
        cmd = build_command(variant, model_dir=model_dir, host="127.0.0.1", port=port, cache_dir=work / "cache")
        _, proc = naive(cmd, f"http://127.0.0.1:{port}", variant.served_name, work, keep=True)
        try:
            results["tokens_per_s"] = run_throughput(f"http://127.0.0.1:{port}", variant.served_name, work,
                                                     a.max_tokens)
        finally:
            kill_group(proc.pid)
    results["loadavg_before"] = load_before
    results["loadavg_after"] = os.getloadavg()

    print()
    print(f"| phase (median of {a.runs}) | naive cold start | standby (Instant Start) |")
    print("|---|---:|---:|")
    for k in [*PHASES, "total"]:
        label = "**wake → first token**" if k == "total" else k
        n, s = results["naive"][k], results["standby"][k]
        print(f"| {label} | {n:.2f} s | {s:.2f} s |")
    spread = {k: [st.phases()["total"] for st in runs] for k, runs in (("naive", naive_runs), ("standby", standby_runs))}
    results["totals"] = spread
    print(f"| wake → first token, each run | {' / '.join(f'{t:.2f}' for t in spread['naive'])} s "
          f"| {' / '.join(f'{t:.2f}' for t in spread['standby'])} s |")
    ratio = results["naive"]["total"] / results["standby"]["total"]
    print(f"\nstandby is {ratio:.1f}x faster than a cold start (median over median, same run)")
    print(f"standby's own start (paid ahead of the wake): {results['standby_import_s']:.1f} s")
    if "tokens_per_s" in results:
        tp = results["tokens_per_s"]
        print("\n| streams | direct vLLM | through the gate |")
        print("|---|---:|---:|")
        for n in (1, 8):
            print(f"| {n} | {tp[f'direct x{n}']:.1f} tok/s | {tp[f'gate x{n}']:.1f} tok/s |")
    print(f"\nload average before {load_before[0]:.2f}, after {results['loadavg_after'][0]:.2f} "
          f"({os.cpu_count()} CPUs, shared)")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
