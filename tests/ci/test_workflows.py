"""The deploy and rollback workflows: they parse, follow the Pulumi Action conventions, run the
same `warmstart` commands as an operator, and their shell steps are shellcheck-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return dict(doc)


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in doc["jobs"].values() for s in job["steps"]]


def test_deploy_runs_pulumi_up_per_environment_in_order() -> None:
    doc = load("deploy.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    job = doc["jobs"]["deploy"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "staging", "prod"]
    assert job["strategy"]["max-parallel"] == 1 and job["environment"] == "${{ matrix.stack }}"
    up = next(s for s in steps(doc) if str(s.get("uses", "")).startswith("pulumi/actions@"))
    assert up["with"] == {"command": "up", "stack-name": "${{ matrix.stack }}", "work-dir": ".",
                          "comment-on-summary": True}
    assert doc["concurrency"]["cancel-in-progress"] is False


def test_rollback_is_a_manual_dispatch_running_warmstart_rollback() -> None:
    doc = load("rollback.yml")
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert inputs["variant"]["default"] == "previous"
    assert inputs["stack"]["options"] == ["dev", "staging", "prod"]
    all_steps = steps(doc)
    checkout = next(s for s in all_steps if str(s.get("uses", "")).startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0  # `previous` reads the stack file's git history
    script = next(s["run"] for s in all_steps if s.get("name") == "warmstart rollback")
    assert 'warmstart rollback "${args[@]}"' in script
    # Inputs reach the shell through env, never spliced into the script (no injection).
    assert "${{" not in script


@pytest.mark.parametrize("name", ["deploy.yml", "rollback.yml"])
def test_run_steps_are_shellcheck_clean(name: str, tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    for i, step in enumerate(s for s in steps(load(name)) if "run" in s):
        body = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", step["run"])
        path = tmp_path / f"step{i}.sh"
        path.write_text("#!/bin/bash\nset -eo pipefail\n" + body)
        res = subprocess.run(["shellcheck", "-e", "SC2034", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{name} step {step.get('name')}: {res.stdout}"
