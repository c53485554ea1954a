"""`warmstart rollback`: target resolution from git history, the snapshot guard, the stack file
edit, and the Automation API driver's exact `pulumi` argv (and a real `pulumi up` on a local
file backend where the pulumi binary is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from click.testing import CliRunner
from pulumi.automation import CommandResult, PulumiCommand
from pulumi.automation.errors import create_command_error
from semver import VersionInfo

from tests.support.fleet import STACK_TEMPLATE
from warmstart.cli import cli
from warmstart.commands.rollback import roll_back
from warmstart.errors import OperationError
from warmstart.ops.stackconfig import repo_root

OLD, NEW = "llama31-8b-eagle3-l40s", "llama31-8b-fp8-l4"


class RecordingPulumi(PulumiCommand):
    """The `pulumi` the workspace runs: records each argv exactly as PulumiCommand.run would
    execute it, and answers with canned CLI output."""

    def __init__(self, fail_up: bool = False) -> None:  # no super(): it would exec `pulumi version`
        self.command = "pulumi"
        self.version = VersionInfo.parse("3.200.0")
        self.fail_up = fail_up
        self.calls: list[list[str]] = []
        self.cwds: set[str] = set()

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str],
            on_output: Any = None, on_error: Any = None) -> CommandResult:
        if "--non-interactive" not in args:
            args.insert(0, "--non-interactive")  # what PulumiCommand.run adds before exec
        self.calls.append([self.command, *args])
        self.cwds.add(cwd)
        verb = [a for a in args if not a.startswith("-")][:2]
        out = ""
        if verb[0] == "up":
            if self.fail_up:
                raise create_command_error(CommandResult(stdout="", stderr="error: update failed: boom", code=1))
            out = "Updating (dev)\n    ~ aws:ec2:LaunchTemplate ws-dev-chat-replica updated\nResources:\n    ~ 1 updated"
            if on_output:
                for line in out.splitlines():
                    on_output(line)
        elif verb == ["stack", "output"]:
            out = json.dumps({"variant": NEW if "--show-secrets" in args else NEW})
        elif verb == ["stack", "history"]:
            out = json.dumps([{
                "kind": "update", "startTime": "2026-11-27T14:00:00.000Z", "message": "rollback",
                "environment": {}, "config": {}, "result": "succeeded", "endTime": "2026-11-27T14:01:00.000Z",
                "resourceChanges": {"update": 1, "same": 40},
            }])
        return CommandResult(stdout=out, stderr="", code=0)


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd,
                   check=True, capture_output=True)


def make_snapshot() -> str:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    return str(ec2.create_snapshot(VolumeId=vol)["SnapshotId"])


@pytest.fixture()
def project(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir (Pulumi.yaml + stacks/) in git: chat ran OLD, then NEW; variants whose
    snapshots exist in moto."""
    proj = tmp_path / "proj"
    (proj / "stacks").mkdir(parents=True)
    shutil.copy(repo_root() / "Pulumi.yaml", proj / "Pulumi.yaml")
    stack = proj / "stacks" / "Pulumi.dev.yaml"
    git(proj, "init", "-q")
    for variant in (OLD, NEW):
        stack.write_text(STACK_TEMPLATE.format(variant=variant))
        git(proj, "add", ".")
        git(proj, "commit", "-q", "-m", f"deploy {variant}")
    variants = tmp_path / "variants"
    variants.mkdir()
    for src in (repo_root() / "variants").glob("*.yaml"):
        data = yaml.safe_load(src.read_text())
        if data.get("weights_snapshot_id"):
            data["weights_snapshot_id"] = make_snapshot()
        (variants / src.name).write_text(yaml.safe_dump(data))
    monkeypatch.setenv("WARMSTART_STACKS_DIR", str(proj / "stacks"))
    monkeypatch.setenv("WARMSTART_VARIANTS_DIR", str(variants))
    return proj


def chat_variant(proj: Path) -> str:
    doc = yaml.safe_load((proj / "stacks" / "Pulumi.dev.yaml").read_text())
    return str(next(e for e in doc["config"]["warmstart:endpoints"] if e["name"] == "chat")["variant"])


def test_rollback_to_previous_runs_pulumi_up_with_the_exact_argv(project: Path) -> None:
    pulumi = RecordingPulumi()
    lines: list[str] = []
    assert roll_back("dev", "previous", endpoint="chat", command=pulumi, echo=lines.append) == OLD
    assert chat_variant(project) == OLD
    assert "# the chat endpoint" in (project / "stacks" / "Pulumi.dev.yaml").read_text()
    message = f"warmstart rollback chat: {NEW} -> {OLD}"
    assert pulumi.calls == [
        ["pulumi", "--non-interactive", "stack", "select", "--stack", "dev"],
        ["pulumi", "--non-interactive", "up", "--yes", "--skip-preview", "--message", message,
         "--exec-kind", "auto.local", "--stack", "dev"],
        ["pulumi", "--non-interactive", "stack", "output", "--json", "--stack", "dev"],
        ["pulumi", "--non-interactive", "stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ["pulumi", "--non-interactive", "stack", "history", "--json", "--show-secrets",
         "--page-size", "1", "--page", "1", "--stack", "dev"],
    ]
    assert pulumi.cwds == {str(project)}  # work_dir: Pulumi.yaml's dir (stackConfigDir: stacks)
    assert "    ~ 1 updated" in lines
    assert lines[-1] == f"rolled back chat to {OLD}: pulumi up succeeded (same 40, update 1)"


def test_previous_after_a_rollback_returns_to_where_it_came_from(project: Path) -> None:
    roll_back("dev", "previous", endpoint="chat", command=RecordingPulumi(), echo=lambda _: None)
    git(project, "commit", "-q", "-am", "rollback")
    assert roll_back("dev", "previous", endpoint="chat", command=RecordingPulumi(), echo=lambda _: None) == NEW


def test_refuses_when_the_target_snapshot_is_gone(project: Path) -> None:
    variants = Path(os.environ["WARMSTART_VARIANTS_DIR"])
    snap = yaml.safe_load((variants / f"{OLD}.yaml").read_text())["weights_snapshot_id"]
    boto3.client("ec2", region_name="us-east-1").delete_snapshot(SnapshotId=snap)
    before = (project / "stacks" / "Pulumi.dev.yaml").read_text()
    res = CliRunner().invoke(cli, ["rollback", "--stack", "dev", "--endpoint", "chat", "--to", "previous"])
    assert res.exit_code == 2
    assert res.stderr == (
        f"error: cannot roll back to {OLD}: its weights snapshot {snap} no longer exists in us-east-1; "
        f"rebuild it with `warmstart weights build --variant {OLD} --snapshot` or pick another variant\n"
    )
    assert (project / "stacks" / "Pulumi.dev.yaml").read_text() == before


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("smollm2-135m-cpu", "variant smollm2-135m-cpu has no weights snapshot"),
        ("no-such-variant", "variant='no-such-variant' has no file"),
        (NEW, f"endpoint chat in stack dev already runs {NEW}; nothing to roll back"),
    ],
)
def test_bad_targets_are_one_line_errors(project: Path, to: str, message: str) -> None:
    res = CliRunner().invoke(cli, ["rollback", "--stack", "dev", "--endpoint", "chat", "--to", to])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert message in res.stderr
    assert chat_variant(project) == NEW


def test_unknown_stack_is_a_one_line_error(project: Path) -> None:
    res = CliRunner().invoke(cli, ["rollback", "--stack", "qa", "--to", "previous"])
    assert res.exit_code == 2 and res.stderr.startswith("error: stack='qa' has no file")


def test_no_up_only_writes_the_stack_file(project: Path) -> None:
    res = CliRunner().invoke(cli, ["rollback", "--stack", "dev", "--endpoint", "chat", "--to", OLD, "--no-up"])
    assert res.exit_code == 0, res.output
    assert chat_variant(project) == OLD
    assert "not applied (--no-up)" in res.output


def test_failed_up_is_reported_in_one_line(project: Path) -> None:
    with pytest.raises(OperationError, match=r"pulumi up -s dev failed: .*boom.* the stack file now names"):
        roll_back("dev", OLD, endpoint="chat", command=RecordingPulumi(fail_up=True), echo=lambda _: None)


def test_previous_needs_history(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lone = tmp_path / "lone" / "stacks"
    lone.mkdir(parents=True)
    (lone / "Pulumi.dev.yaml").write_text(STACK_TEMPLATE.format(variant=NEW))
    git(lone.parent, "init", "-q")
    git(lone.parent, "add", ".")
    git(lone.parent, "commit", "-q", "-m", "only ever one variant")
    monkeypatch.setenv("WARMSTART_STACKS_DIR", str(lone))
    res = CliRunner().invoke(cli, ["rollback", "--stack", "dev", "--endpoint", "chat", "--to", "previous"])
    assert res.exit_code == 2
    assert "no earlier variant of endpoint chat in the git history of Pulumi.dev.yaml" in res.stderr


PROGRAM = """\
import pulumi

endpoints = pulumi.Config("warmstart").require_object("endpoints")
pulumi.export("variant", endpoints[0]["variant"])
"""


def test_real_pulumi_up_on_a_local_file_backend(project: Path, tmp_path: Path) -> None:
    """The same driver, the real CLI: only where a pulumi binary is installed."""
    binary = shutil.which("pulumi")
    if binary is None:
        pytest.skip("the pulumi CLI is not on PATH (it cannot be installed here); the recorded-argv tests cover the driver")
    from stacks import automation

    # A stand-in program (the real one needs AWS credentials and provider plugins): it reads the
    # same stack config the rollback writes and exports the variant.
    (project / "stacks" / "__main__.py").write_text(PROGRAM)
    doc = yaml.safe_load((project / "Pulumi.yaml").read_text())
    doc["runtime"] = {"name": "python", "options": {"virtualenv": str(Path(sys.prefix))}}
    (project / "Pulumi.yaml").write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"
    state.mkdir()
    env = {"PULUMI_BACKEND_URL": f"file://{state}", "PULUMI_CONFIG_PASSPHRASE": "test"}
    automation.up("dev", work_dir=project, env=env, create=True, on_output=lambda _: None)
    roll_back("dev", "previous", endpoint="chat", env=env, echo=lambda _: None)
    summary = automation.up("dev", work_dir=project, env=env, on_output=lambda _: None)
    assert summary.outputs["variant"] == OLD
