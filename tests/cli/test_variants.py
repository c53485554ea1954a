"""`warmstart variants list|show` over the shipped catalog and a temporary one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from warmstart.cli import cli
from warmstart.spec import list_variants


def test_list_shows_every_shipped_variant() -> None:
    res = CliRunner().invoke(cli, ["variants", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:3] == ["NAME", "GPU", "SNAPSHOT"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == [v.name for v in list_variants()]
    row = next(line for line in lines if line.startswith("llama31-8b-eagle3-l40s "))
    assert row.split()[1:5] == ["g6e.xlarge", "snap-0b2c3d4e5f6071829", "2026-11-24", "eagle3"]


def test_list_json_round_trips() -> None:
    res = CliRunner().invoke(cli, ["variants", "list", "--json"])
    rows = json.loads(res.output)
    local = next(r for r in rows if r["name"] == "smollm2-135m-cpu")
    assert local["gpu"] == "cpu" and local["snapshot"] is None


def test_show_prints_engine_and_gpu() -> None:
    res = CliRunner().invoke(cli, ["variants", "show", "llama31-8b-fp8-l4"])
    assert res.exit_code == 0, res.output
    assert "gpu          g6.xlarge (L4), fallbacks: g5.xlarge" in res.output
    assert "engine.quantization" in res.output and "fp8" in res.output
    data = json.loads(CliRunner().invoke(cli, ["variants", "show", "llama31-8b-fp8-l4", "--json"]).output)
    assert data["weights_snapshot_id"] == "snap-0a1b2c3d4e5f60718"
    assert data["engine"]["max_model_len"] == 16384


def test_unknown_variant_is_one_line_exit_2() -> None:
    res = CliRunner().invoke(cli, ["variants", "show", "gpt-5"])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: variant='gpt-5' has no file") and res.stderr.count("\n") == 1


def test_a_broken_catalog_entry_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bad.yaml").write_text("model: x\nserved_name: x\ngpu: {instance_type: g9.huge}\n")
    monkeypatch.setenv("WARMSTART_VARIANTS_DIR", str(tmp_path))
    res = CliRunner().invoke(cli, ["variants", "list"])
    assert res.exit_code == 2
    assert "variant bad:" in res.stderr and "g9.huge" in res.stderr and res.stderr.count("\n") == 1
