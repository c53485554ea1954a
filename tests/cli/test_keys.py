"""`warmstart keys ...` end to end: click's CliRunner against real stores, and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner, Result

from runtime.gate.keys import hash_key, is_well_formed, open_key_store
from tests.support.keys import create_keys_table
from warmstart.cli import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def url(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'keys.db'}"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["keys", *args], catch_exceptions=False)


def create(url: str, *extra: str) -> str:
    result = run("create", "--keys", url, "--endpoint", "demo", *extra)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_create_prints_the_key_once_alone_on_stdout(url: str) -> None:
    result = run("create", "--keys", url, "--endpoint", "demo", "--kind", "playground", "--plan", "team",
                 "--expires", "30d", "--rate", "60/min", "--daily-cap", "100", "--name", "ci bot")
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert is_well_formed(key) and result.stdout == key + "\n"
    warning = result.stderr.strip()
    assert "\n" not in warning and warning.startswith("warning:") and "shown only now" in warning
    assert key not in result.stderr and f"{key[:12]}\u2026{key[-4:]}" in warning
    record = open_key_store(url).get(hash_key(key))
    assert record is not None
    assert (record.endpoint, record.kind, record.plan, record.rate_per_min, record.daily_cap, record.name) == (
        "demo", "playground", "team", 60.0, 100, "ci bot",
    )
    assert record.expires_at is not None and abs(record.expires_at - record.created_at - 30 * 86400) < 5


def test_create_json(url: str) -> None:
    result = run("create", "--keys", url, "--endpoint", "demo", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert is_well_formed(data["key"])
    assert data["record"]["display"] == f"{data['key'][:12]}\u2026{data['key'][-4:]}"
    assert data["record"]["state"] == "active" and "key_hash" not in data["record"]


def test_list_shows_display_forms_only(url: str) -> None:
    keys = [create(url), create(url, "--name", "second")]
    result = run("list", "--keys", url)
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["KEY", "ENDPOINT", "KIND", "PLAN", "STATE"] and len(lines) == 3
    for key in keys:
        assert f"{key[:12]}\u2026{key[-4:]}" in result.stdout
        assert key[12:-4] not in result.stdout and hash_key(key) not in result.stdout
    listed = json.loads(run("list", "--keys", url, "--json").stdout)
    assert [item["name"] for item in listed] == [None, "second"]
    for key in keys:
        assert hash_key(key) not in json.dumps(listed) and key[12:-4] not in json.dumps(listed)
    assert run("list", "--keys", url, "--endpoint", "other").stdout.strip().splitlines()[1:] == []


def test_revoke_and_rotate(url: str) -> None:
    key = create(url, "--expires", "never")
    result = run("rotate", "--keys", url, f"{key[:12]}...{key[-4:]}", "--grace", "1h")
    assert result.exit_code == 0, result.stderr
    new_key = result.stdout.strip()
    assert is_well_formed(new_key) and new_key != key
    assert "stays valid until" in result.stderr
    store = open_key_store(url)
    old, new = store.get(hash_key(key)), store.get(hash_key(new_key))
    assert old is not None and new is not None and new.rotated_from == old.key_hash
    assert old.expires_at is not None and abs(old.expires_at - new.created_at - 3600) < 1e-6
    result = run("revoke", "--keys", url, new_key)
    assert result.exit_code == 0 and result.stdout.startswith(f"revoked {new.display} at ")
    revoked = store.get(hash_key(new_key))
    assert revoked is not None and revoked.revoked_at is not None
    data = json.loads(run("revoke", "--keys", url, new.display, "--json").stdout)
    assert data["state"] == "revoked" and data["revoked_at"] == revoked.revoked_at


def test_rotate_json_includes_the_old_key(url: str) -> None:
    key = create(url)
    data = json.loads(run("rotate", "--keys", url, key, "--grace", "0", "--json").stdout)
    assert is_well_formed(data["key"]) and data["old"]["state"] == "expired"
    assert data["record"]["rotated_from"] == hash_key(key)[:12]


BAD = [
    (["create", "--endpoint", "demo", "--expires", "soon"], "--expires='soon'"),
    (["create", "--endpoint", "demo", "--expires", "2001-01-01"], "in the past"),
    (["create", "--endpoint", "demo", "--rate", "60"], "--rate='60'"),
    (["create", "--endpoint", "demo", "--rate", "0/min"], "--rate='0/min'"),
    (["create", "--endpoint", "demo", "--daily-cap", "0"], "--daily-cap='0'"),
    (["create", "--endpoint", "demo", "--daily-cap", "lots"], "--daily-cap='lots'"),
    (["create", "--endpoint", "demo", "--kind", "admin"], "kind='admin'"),
    (["create", "--endpoint", "demo", "--plan", "gold"], "plan='gold'"),
    (["create", "--endpoint", "demo", "--name", ""], "name=''"),
    (["create", "--endpoint", "Not Valid"], "endpoint='Not Valid'"),
    (["create"], "--endpoint is required"),
    (["revoke", "ws_live_zz"], "'ws_live_zz'"),
    (["revoke", "ws_live_" + "0" * 64], "no key matches"),
    (["rotate", "ws_live_" + "0" * 64, "--grace", "forever"], "--grace='forever'"),
    (["rotate", "ws_live_" + "0" * 64, "--grace", ""], "--grace=''"),
    (["rotate", "ws_live_" + "0" * 64, "--grace", "400d"], "grace_s="),
    (["list", "--endpoint", "UPPER"], "endpoint='UPPER'"),
    (["rotate", "ws_live_" + "0" * 64, "--grace", "1h", "--expires", "yesterday"], "--expires='yesterday'"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(url: str, args: list[str], needle: str) -> None:
    create(url)
    before = open_key_store(url).list()
    result = run(*args[:1], "--keys", url, *args[1:])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert open_key_store(url).list() == before


@pytest.mark.parametrize("bad_url", ["postgres://x", "sqlite:", "dynamodb:x"])
def test_bad_store_url(bad_url: str) -> None:
    result = run("list", "--keys", bad_url)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: keys={bad_url!r}")


def test_ambiguous_identifier(url: str) -> None:
    made = [create(url) for _ in range(17)]  # 17 keys, 16 first hex digits: two must share one
    firsts = [k[8] for k in made]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    result = run("revoke", "--keys", url, f"ws_live_{shared}")
    assert result.exit_code == 2 and "matches" in result.stderr and result.stderr.count("\n") == 1
    assert all(k[12:-4] not in result.stderr for k in made)


def test_default_store_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = run("create", "--endpoint", "demo").stdout.strip()
    assert open_key_store(f"sqlite:{tmp_path / '.warmstart' / 'keys.db'}").get(hash_key(key)) is not None
    monkeypatch.setenv("WARMSTART_KEYS", f"sqlite:{tmp_path / 'env.db'}")
    other = run("create", "--endpoint", "demo").stdout.strip()
    assert open_key_store(f"sqlite:{tmp_path / 'env.db'}").get(hash_key(other)) is not None


def test_cli_against_dynamodb(aws_env: str) -> None:
    create_keys_table("ws-dev-demo-keys")
    url = "dynamodb:ws-dev-demo-keys"
    key = create(url, "--rate", "2/s")
    listing = run("list", "--keys", url, "--endpoint", "demo")
    assert f"{key[:12]}\u2026{key[-4:]}" in listing.stdout and key[12:-4] not in listing.stdout
    item = boto3.client("dynamodb").get_item(TableName="ws-dev-demo-keys", Key={"key_hash": {"S": hash_key(key)}})
    assert item["Item"]["rate_per_min"] == {"N": "120.0"}
    assert run("revoke", "--keys", url, key).exit_code == 0


def test_real_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "warmstart"
    assert exe.exists(), f"{exe}: install the package (pip install -e .)"
    url = f"sqlite:{tmp_path / 'keys.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMSTART_")}
    done = subprocess.run(
        [str(exe), "keys", "create", "--keys", url, "--endpoint", "demo", "--rate", "60/min"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert is_well_formed(key) and done.stderr.count("\n") == 1
    record = open_key_store(url).get(hash_key(key))
    assert record is not None and record.rate_per_min == 60.0
    bad = subprocess.run(
        [str(exe), "keys", "create", "--keys", url, "--endpoint", "demo", "--expires", "whenever"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: --expires='whenever'") and bad.stdout == ""


def test_list_never_prints_control_characters(aws_env: str) -> None:
    create_keys_table("ws-dev-demo-keys")
    key = "ws_live_" + "ab" * 32
    boto3.client("dynamodb").put_item(TableName="ws-dev-demo-keys", Item={
        "key_hash": {"S": hash_key(key)}, "endpoint": {"S": "demo"}, "kind": {"S": "api"},
        "plan": {"S": "pro"}, "prefix": {"S": key[:12]}, "last4": {"S": key[-4:]},
        "created_at": {"N": "1764000000"}, "name": {"S": "evil\x1b[2J\nname"},
    })
    result = run("list", "--keys", "dynamodb:ws-dev-demo-keys")
    assert result.exit_code == 0 and "\x1b" not in result.stdout and len(result.stdout.splitlines()) == 2
    assert "evil" in result.stdout


def test_only_create_makes_a_new_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    for args in (["list"], ["revoke", "ws_live_abcd"], ["rotate", "ws_live_abcd"]):
        result = run(*args, "--keys", f"sqlite:{missing}")
        assert result.exit_code == 2 and "does not exist" in result.stderr and result.stderr.count("\n") == 1
    assert not missing.exists()
    assert is_well_formed(create(f"sqlite:{missing}"))
