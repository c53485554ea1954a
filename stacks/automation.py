"""The Automation API driver: `pulumi up` of this project's program for one stack, from Python.

Used by `warmstart rollback` (and so by the rollback workflow): the stack file is edited first
(warmstart.ops.stackconfig), then this runs the Pulumi CLI through `pulumi.automation`'s
LocalWorkspace with work_dir = the project root, where Pulumi.yaml says `main: stacks/` and
`stackConfigDir: stacks`, so the CLI reads exactly the stacks/Pulumi.<env>.yaml just written.

`command` is the PulumiCommand the workspace runs (default: the `pulumi` on PATH); tests hand in
one that records the argv.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pulumi import automation as auto

from warmstart.errors import OperationError


@dataclass(frozen=True)
class UpSummary:
    result: str
    changes: dict[str, int]
    outputs: dict[str, object]


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no output"


def workspace_options(
    work_dir: Path, command: auto.PulumiCommand | None, env: Mapping[str, str] | None
) -> auto.LocalWorkspaceOptions:
    if command is None:
        try:
            command = auto.PulumiCommand()
        except FileNotFoundError:
            raise OperationError(
                "the pulumi CLI is not installed (needed to apply the stack); install it "
                "(https://www.pulumi.com/docs/install/) or run with --no-up and apply with `pulumi up` later"
            ) from None
    return auto.LocalWorkspaceOptions(work_dir=str(work_dir), pulumi_command=command, env_vars=dict(env or {}))


def up(
    stack_name: str,
    *,
    work_dir: Path,
    command: auto.PulumiCommand | None = None,
    env: Mapping[str, str] | None = None,
    message: str | None = None,
    on_output: Callable[[str], object] = print,
    create: bool = False,
) -> UpSummary:
    """Select (or, with create, create) the stack and run `pulumi up --yes --skip-preview` on it."""
    opts = workspace_options(work_dir, command, env)
    try:
        if create:
            stack = auto.create_or_select_stack(stack_name=stack_name, work_dir=str(work_dir), opts=opts)
        else:
            stack = auto.select_stack(stack_name=stack_name, work_dir=str(work_dir), opts=opts)
    except auto.StackNotFoundError:
        raise OperationError(
            f"stack {stack_name!r} is not initialized in the Pulumi backend; run `pulumi stack init {stack_name}`"
        ) from None
    except auto.CommandError as e:
        raise OperationError(f"pulumi stack select {stack_name} failed: {_last_lines(str(e))}") from None
    try:
        result = stack.up(on_output=on_output, message=message)
    except auto.ConcurrentUpdateError:
        raise OperationError(
            f"another update of stack {stack_name} is running; wait for it and run the command again"
        ) from None
    except auto.CommandError as e:
        raise OperationError(f"pulumi up -s {stack_name} failed: {_last_lines(str(e))}") from None
    changes = dict(result.summary.resource_changes or {})
    return UpSummary(
        result=str(result.summary.result),
        changes={str(k): int(v) for k, v in changes.items()},
        outputs={k: v.value for k, v in result.outputs.items() if not v.secret},
    )
