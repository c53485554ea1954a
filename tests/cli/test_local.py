"""`warmstart local up|down|status` refusals and idle answers (the e2e tests run the real thing)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from runtime.gate.keys import hash_key, open_key_store
from runtime.local.embedded import local_keys
from tests.support.net import free_port
from warmstart.cli import cli

REPO = Path(__file__).resolve().parents[2]


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


def _up(home: Path, port: int) -> dict[str, str]:
    """`warmstart local up --detach` against a real gate (no standby and no request: no vLLM starts)."""
    out = subprocess.run(
        [sys.executable, "-m", "warmstart", "local", "up", "--home", str(home), "--port", str(port),
         "--no-standby", "--no-wait", "--detach"],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.partition("=")[::2] for line in out.stdout.splitlines() if "=" in line)
    assert set(lines) >= {"URL", "API_KEY", "PLAYGROUND"}, out.stdout
    return lines


def test_up_prints_a_playground_url_and_reuses_active_keys(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    try:
        first = _up(home, port)
        prefix = f"http://127.0.0.1:{port}/playground#key="
        assert first["PLAYGROUND"].startswith(prefix)
        pg_key = first["PLAYGROUND"][len(prefix):]
        assert pg_key != first["API_KEY"]
        info = json.loads((home / "local.json").read_text())
        assert info["playground"] == first["PLAYGROUND"]
        for f in ("local.json", "local-keys.json"):
            assert (home / f).stat().st_mode & 0o077 == 0  # live keys: owner only

        store = open_key_store(f"sqlite:{home / 'keys.db'}")
        try:
            record = store.get(hash_key(pg_key))
            assert record is not None and record.kind == "playground" and record.endpoint == "local"
            # The gate serves the page, and the key is a playground key it accepts.
            with urllib.request.urlopen(first["PLAYGROUND"].split("#")[0], timeout=10) as r:
                assert r.status == 200
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                         headers={"Authorization": f"Bearer {pg_key}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200

            assert run("local", "down", "--home", str(home))[0] == 0
            again = _up(home, port)
            assert again["API_KEY"] == first["API_KEY"] and again["PLAYGROUND"] == first["PLAYGROUND"]

            # A revoked key is not reused: that kind gets a fresh one, the other is kept.
            store.revoke(hash_key(pg_key))
            assert run("local", "down", "--home", str(home))[0] == 0
            third = _up(home, port)
            assert third["API_KEY"] == first["API_KEY"]
            assert third["PLAYGROUND"] != first["PLAYGROUND"] and third["PLAYGROUND"].startswith(prefix)
        finally:
            store.close()
    finally:
        run("local", "down", "--home", str(home))


def test_keys_not_reused_when_expired_or_of_another_kind(tmp_path: Path) -> None:
    uri = f"sqlite:{tmp_path / 'keys.db'}"
    keys = local_keys(uri, tmp_path)
    assert set(keys) == {"api", "playground"}
    assert local_keys(uri, tmp_path) == keys
    # A day later nothing has changed (the keys carry no expiry)...
    assert local_keys(uri, tmp_path, now=time.time() + 86400) == keys
    # ...but a file that names the wrong kinds (or garbage) gets fresh keys, never a swap.
    (tmp_path / "local-keys.json").write_text(json.dumps({"api": keys["playground"], "playground": "nope"}))
    fresh = local_keys(uri, tmp_path)
    assert fresh["api"] not in (keys["api"], keys["playground"]) and fresh["playground"] != keys["playground"]
    (tmp_path / "local-keys.json").write_text("[1, 2]")
    assert set(local_keys(uri, tmp_path)) == {"api", "playground"}
