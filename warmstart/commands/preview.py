"""`warmstart preview --stack ENV [--json]`: the stack's resource graph, offline.

Runs the real stack program under Pulumi's mocks (stacks/preview.py): no AWS credentials, no
Pulumi CLI, a few seconds. A bad stack file fails with one line and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("preview")
@click.option("--stack", "stack", required=True, metavar="ENV", help="dev, staging, prod (stacks/Pulumi.<ENV>.yaml)")
@click.option("--json", "as_json", is_flag=True, help='print {"resources": [{type, name, parent, inputs, options}]}')
@click.option("--stack-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory holding Pulumi.<ENV>.yaml (default: stacks/)")
def preview(stack: str, as_json: bool, stack_dir: Path | None) -> None:
    """Render a stack's resource graph offline (no AWS, no Pulumi CLI)."""
    from stacks.preview import render_stack, tree

    graph = render_stack(stack, stack_dir=stack_dir)
    if as_json:
        click.echo(json.dumps(graph.to_json(), indent=1, sort_keys=True))
    else:
        click.echo(tree(graph))
