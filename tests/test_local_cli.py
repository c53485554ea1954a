"""`warmstart local up|down|status` refusals and idle answers (the e2e tests run the real thing)."""

from __future__ import annotations

import socket
from pathlib import Path

from click.testing import CliRunner

from warmstart.cli import cli


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = run("local", "up", "--home", str(tmp_path), "--port", str(port))
    assert code == 2
    assert out.strip() == f"error: port {port} on 127.0.0.1 is in use; pass --port with a free port"


def test_gpu_variant_refused(tmp_path: Path) -> None:
    code, out = run("local", "up", "--home", str(tmp_path), "--port", "1", "--variant", "llama31-8b-fp8-l4")
    assert code == 2 and "needs a GPU" in out and "\n" not in out.strip()


def test_unknown_variant(tmp_path: Path) -> None:
    code, out = run("local", "up", "--home", str(tmp_path), "--variant", "nope")
    assert code == 2 and out.startswith("error: variant='nope'")


def test_status_and_down_when_nothing_runs(tmp_path: Path) -> None:
    code, out = run("local", "status", "--home", str(tmp_path))
    assert code == 0 and "not running" in out
    code, out = run("local", "down", "--home", str(tmp_path))
    assert code == 0 and "nothing was running" in out


def test_bad_idle_timeout(tmp_path: Path) -> None:
    code, out = run("local", "up", "--home", str(tmp_path), "--idle-timeout", "0")
    assert code == 2 and "--idle-timeout" in out
