"""The gate benchmark cannot rot: bench/gate.py runs end to end in a tiny configuration (the real
upstream, nginx as the relay floor, the real `warmstart gate` under gunicorn with the memory and
the redis store, the real load generator) and its table has the rows, counts and columns the README relies on.

No timing is asserted: only structure and counts. LiteLLM is left out (it lives in .venv-bench).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 3
LEVELS = (1, 3)
TARGETS = ("direct", "nginx", "gate-memory", "gate-redis")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("bench")
    argv = [sys.executable, "-m", "bench.gate", "--targets", ",".join(TARGETS),
            "--levels", ",".join(map(str, LEVELS)), "--duration", "0.5", "--rounds", "1",
            "--tokens", str(TOKENS), "--interval-ms", "1", "--first-token-ms", "0",
            "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), proc.stdout


def test_every_path_and_level_has_a_row_without_errors(bench_run: tuple[dict, str, str]) -> None:
    data, _, _ = bench_run
    rows = data["rows"]
    assert [(r["concurrency"], r["target"]) for r in rows] == [(c, t) for c in LEVELS for t in TARGETS]
    for r in rows:
        assert r["requests"] >= r["concurrency"], r
        assert r["errors"] == {} and r["ok"] == r["requests"], r
        # Every stream arrived whole through every path: one event per token plus [DONE].
        assert r["events"] == r["ok"] * (TOKENS + 1), r


def test_proxy_rows_are_relative_to_direct_and_carry_cpu(bench_run: tuple[dict, str, str]) -> None:
    data, _, _ = bench_run
    for r in data["rows"]:
        relative = ("added_p50_ms", "added_p99_ms", "added_ttft_p50_ms", "x_direct_p50", "cpu_ms_per_request",
                    "events_per_core_s")
        if r["target"] == "direct":
            assert all(r[k] is None for k in relative), r
        else:
            assert all(r[k] is not None for k in relative), r
            assert r["cpu_ms_per_request"] > 0  # the proxy's own process tree did the relaying
            # Every relay is also measured against the floor of the same run.
            assert r["of_nginx_events"] is not None and r["of_nginx_events"] > 0, r
    stats = data["meta"]["upstream_stats"]
    # Everything measured (plus the warm-up) reached the one upstream, and nothing was left open.
    assert stats["completed"] >= sum(r["ok"] for r in data["rows"])
    assert stats["aborted"] == 0 and stats["active"] == 0


def test_markdown_table_and_verdicts(bench_run: tuple[dict, str, str]) -> None:
    data, md, stdout = bench_run
    assert md.strip() == stdout.strip()
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + len(LEVELS) * len(TARGETS)
    width = table[0].count("|")
    assert all(ln.count("|") == width for ln in table)
    assert data["meta"]["command"] in lines[0]
    verdicts = [ln for ln in lines if ln.startswith("- ")]
    assert [v.split(" @ ")[0] for v in verdicts] == ["- gate-memory", "- gate-redis"]
    assert all(v.endswith(("MET", "MISSED", "INCONCLUSIVE (both within noise of direct)")) for v in verdicts)


def test_load_generator_only_targets_loopback() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench._load", "--url", "http://10.1.2.3:80/v1",
                           "--concurrency", "1", "--duration", "0.1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "only targets loopback" in proc.stderr


def test_bad_flags_are_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.gate", "--targets", "direct,apache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "choose from direct, nginx, gate-memory, gate-redis, litellm" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_profile_summary_reads_py_spy_collapsed_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ is a directory of scripts, not an installed package
    from bench.profile_gate import top_functions

    collapsed = ("handle (gunicorn/ggevent.py:10);relay (runtime/gate/app.py:300);send (gevent/_socketcommon.py:7) 6\n"
                 "handle (gunicorn/ggevent.py:10);admit (runtime/gate/store.py:110) 3\n"
                 "handle (gunicorn/ggevent.py:12) 1\n")
    own, incl, total = top_functions(collapsed, 10)
    assert total == 10
    assert own[0] == ("send (gevent/_socketcommon.py)", 0.6)
    assert dict(incl)["handle (gunicorn/ggevent.py)"] == 1.0  # two lines of one function count once per stack
    assert dict(incl)["relay (runtime/gate/app.py)"] == 0.6


def test_three_times_less_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench._report import _three_x

    assert _three_x(30.0, 10.0) is True
    assert _three_x(29.0, 10.0) is False
    assert _three_x(5.0, -1.0) is True  # the gate within noise of direct, LiteLLM measurably slower
    assert _three_x(-80.0, -130.0) is None  # both within noise: no verdict either way
