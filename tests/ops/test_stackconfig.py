"""Stack files edited by the day-two commands: the real stacks/Pulumi.*.yaml parse, and an edit
changes exactly the field it sets (comments, order and everything else survive)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from warmstart.errors import ConfigError
from warmstart.ops.stackconfig import StackFile, known_stacks, repo_root

REAL = repo_root() / "stacks"


@pytest.mark.parametrize("env", known_stacks(REAL))
def test_real_stack_files_round_trip_with_one_line_changed(env: str, tmp_path: Path) -> None:
    shutil.copy(REAL / f"Pulumi.{env}.yaml", tmp_path / f"Pulumi.{env}.yaml")
    sf = StackFile.load(env, tmp_path)
    eps = sf.endpoints()
    assert eps and all(e.environment == sf.environment for e in eps)
    before = (tmp_path / f"Pulumi.{env}.yaml").read_text()
    assert sf.dumps() == before  # an untouched round trip is byte-identical

    first = eps[0]
    sf.set_fields(first.name, stopped=not first.stopped)
    sf.save()
    after = (tmp_path / f"Pulumi.{env}.yaml").read_text()
    changed = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:1] in "+-"]
    assert len([d for d in changed if d.startswith("+")]) == 1, changed
    assert StackFile.load(env, tmp_path).endpoint(first.name).stopped is (not first.stopped)


def test_an_invalid_edit_is_refused_and_not_written(tmp_path: Path) -> None:
    shutil.copy(REAL / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    sf = StackFile.load("dev", tmp_path)
    name = sf.endpoints()[0].name
    with pytest.raises(ConfigError, match="max_replicas"):
        sf.set_fields(name, max_replicas=999)
    assert sf.endpoint(name).max_replicas != 999  # rolled back in memory too
