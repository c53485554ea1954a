"""Where the gate's CPU goes under streaming load: py-spy on the gate's worker(s) during a bench load.

    python -m bench.profile_gate --store memory --concurrency 64 --duration 20

Starts the same upstream and `warmstart gate` as bench/gate.py, records the gunicorn worker(s)
with py-spy (installed in .venv-bench: `.venv-bench/bin/pip install py-spy`) while the load
generator runs, and prints the functions with the most samples, by own time and including
callees. `--out FILE` keeps the collapsed stacks (flamegraph.pl / speedscope read them).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import _procs
from bench.gate import ENDPOINT, MODEL, run_load


def top_functions(collapsed: str, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """(own-time share, inclusive share) per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        return [], [], 0
    return ([(f, c / total) for f, c in own.most_common(n)], [(f, c / total) for f, c in incl.most_common(n)],
            total)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_gate", description=__doc__.split("\n")[0])
    p.add_argument("--store", default="memory", help="memory or redis (a local redis-server is started)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--py-spy", default=str(_procs.ROOT / ".venv-bench" / "bin" / "py-spy"))
    p.add_argument("--out", type=Path, help="keep py-spy's collapsed stacks here")
    a = p.parse_args(argv)
    spy = a.py_spy if Path(a.py_spy).exists() else shutil.which("py-spy")
    if not spy:
        p.error("py-spy not found; run `.venv-bench/bin/pip install py-spy` or pass --py-spy PATH")

    servers: list[_procs.Server] = []
    with tempfile.TemporaryDirectory(prefix="ws-prof-") as tmp:
        work = Path(tmp)
        try:
            upstream = _procs.start_upstream(work, 16, 25.0, 25.0)
            servers.append(upstream)
            key = _procs.mint_key(work / "keys.db", ENDPOINT)
            store = "memory"
            if a.store == "redis":
                redis = _procs.start_redis(work)
                servers.append(redis)
                store = redis.url
            gate = _procs.start_gate("gate", work, upstream, store, work / "keys.db", ENDPOINT, 240, 1, MODEL)
            servers.append(gate)
            run_load(gate.url, key, 8, 2.0)  # warm
            workers = [pid for pid in _procs._descendants(gate.proc.pid) if pid != gate.proc.pid]
            outs = [work / f"spy-{pid}.txt" for pid in workers]
            spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                                       "--duration", str(int(a.duration)), "--output", str(o), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for pid, o in zip(workers, outs, strict=True)]
            load = threading.Thread(target=run_load, args=(gate.url, key, a.concurrency, a.duration))
            load.start()
            for spy_proc in spies:
                _, err = spy_proc.communicate(timeout=a.duration + 60)
                if spy_proc.returncode != 0:
                    print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)
            load.join()
            collapsed = "\n".join(o.read_text() for o in outs if o.exists())
        finally:
            for server in reversed(servers):
                server.stop()
    if a.out:
        a.out.write_text(collapsed)
    own, incl, total = top_functions(collapsed, a.top)
    print(f"{total} samples of the gate worker(s), store {a.store}, {a.concurrency} streams\n")
    print("own time:")
    for f, share in own:
        print(f"  {share * 100:5.1f}%  {f}")
    print("\nincluding callees:")
    for f, share in incl:
        print(f"  {share * 100:5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
