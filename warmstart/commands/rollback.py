"""`warmstart rollback --stack ENV --to VARIANT|previous [--endpoint NAME]`.

1. resolve the target: a variant name, or `previous` = the variant this endpoint ran before its
   current one, read from the git history of stacks/Pulumi.<env>.yaml (the file every deploy and
   rollback commits, so its history is the deployment record; nothing else to keep in sync)
2. refuse unless the target's weights snapshot still exists and is complete (describe_snapshots):
   a rollback reuses cached weights, it never re-downloads a model
3. write the endpoint's `variant` in the stack file (comments kept)
4. `pulumi up` through the Automation API (stacks/automation.py), unless --no-up
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from warmstart.errors import OperationError
from warmstart.ops.aws import client, describe, error_code
from warmstart.ops.stackconfig import StackFile, previous_variant
from warmstart.spec import Variant, load_variant


def check_snapshot(variant: Variant, region: str | None) -> str:
    snap = variant.weights_snapshot_id
    if snap is None:
        raise OperationError(
            f"variant {variant.name} has no weights snapshot (weights_snapshot_id); build one with "
            f"`warmstart weights build --variant {variant.name} --snapshot` before deploying it"
        )
    where = region or "this region"
    try:
        found = client("ec2", region).describe_snapshots(SnapshotIds=[snap])["Snapshots"]
    except ClientError as e:
        if error_code(e) in ("InvalidSnapshot.NotFound", "InvalidSnapshotID.Malformed"):
            found = []
        else:
            raise OperationError(f"cannot check snapshot {snap}: {describe(e)}") from None
    except BotoCoreError as e:
        raise OperationError(f"cannot check snapshot {snap}: {describe(e)}") from None
    if not found:
        raise OperationError(
            f"cannot roll back to {variant.name}: its weights snapshot {snap} no longer exists in {where}; "
            f"rebuild it with `warmstart weights build --variant {variant.name} --snapshot` or pick another variant"
        )
    state = found[0].get("State")
    if state != "completed":
        raise OperationError(f"cannot roll back to {variant.name}: snapshot {snap} is {state}, not completed; retry later")
    return str(snap)


def roll_back(
    stack: str, to: str, *, endpoint: str | None = None, apply: bool = True,
    command: Any = None, env: dict[str, str] | None = None, echo: Callable[[str], object] = click.echo,
) -> str:
    sf = StackFile.load(stack)
    ep = sf.endpoint(endpoint)
    target = previous_variant(sf, ep.name) if to == "previous" else to
    if target == ep.variant:
        raise OperationError(f"endpoint {ep.name} in stack {stack} already runs {target}; nothing to roll back")
    variant = load_variant(target)
    snap = check_snapshot(variant, sf.region)
    sf.set_fields(ep.name, variant=target)
    sf.save()
    echo(f"stack file {sf.path}: {ep.name}: variant {ep.variant} -> {target} (weights {snap})")
    if not apply:
        echo(f"not applied (--no-up); apply with `pulumi up -s {stack}`")
        return target
    from stacks import automation

    try:
        summary = automation.up(
            stack, work_dir=sf.path.parent.parent, command=command, env=env,
            message=f"warmstart rollback {ep.name}: {ep.variant} -> {target}", on_output=echo,
        )
    except OperationError as e:
        raise OperationError(
            f"{e} — the stack file now names {target}; rerun the rollback or `pulumi up -s {stack}`"
        ) from None
    changed = ", ".join(f"{k} {v}" for k, v in sorted(summary.changes.items())) or "no changes"
    echo(f"rolled back {ep.name} to {target}: pulumi up {summary.result} ({changed})")
    return target


@click.command("rollback")
@click.option("--stack", required=True, metavar="ENV", help="stack (stacks/Pulumi.ENV.yaml)")
@click.option("--to", "to", required=True, metavar="VARIANT|previous", help="variant name, or 'previous'")
@click.option("--endpoint", metavar="NAME", help="endpoint in the stack (if several)")
@click.option("--no-up", is_flag=True, help="only write the stack file; apply it later with pulumi up")
def rollback(stack: str, to: str, endpoint: str | None, no_up: bool) -> None:
    """Roll an endpoint back to a prior variant whose weights snapshot still exists."""
    roll_back(stack, to, endpoint=endpoint, apply=not no_up)
