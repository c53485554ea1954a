"""`warmstart variants list|show`: the variant catalog (variants/*.yaml, or $WARMSTART_VARIANTS_DIR)."""

from __future__ import annotations

import json
from typing import Any

import click

from warmstart.spec import Variant, list_variants, load_variant


def _row(v: Variant) -> dict[str, Any]:
    return {
        "name": v.name,
        "gpu": v.gpu.instance_type,
        "model": v.model,
        "served_name": v.served_name,
        "snapshot": v.weights_snapshot_id,
        "created": v.created.isoformat() if v.created else None,
        "tuned_on": v.tuned_on,
        "speculative": v.engine.speculative_config.method if v.engine.speculative_config else None,
    }


@click.group()
def variants() -> None:
    """The variant catalog: model + engine settings + GPU + weights snapshot."""


@variants.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_cmd(as_json: bool) -> None:
    """Every variant, one line each."""
    rows = [_row(v) for v in list_variants()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("NAME", "GPU", "SNAPSHOT", "CREATED", "SPEC", "MODEL")
    table = [header] + [
        (r["name"], r["gpu"], r["snapshot"] or "-", r["created"] or "-", r["speculative"] or "-", r["model"])
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + str(row[-1]))


@variants.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show(name: str, as_json: bool) -> None:
    """One variant in full: engine arguments, GPU and fallbacks, snapshot, benchmark figures."""
    v = load_variant(name)
    data = v.model_dump(mode="json", exclude_defaults=False)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{v.name}: {v.description or v.model}")
    click.echo(f"  model        {v.model} (served as {v.served_name!r}; 'default' also works)")
    fallbacks = ", ".join(v.gpu.fallback_instance_types) or "none"
    click.echo(f"  gpu          {v.gpu.instance_type} ({v.gpu.info.gpu}), fallbacks: {fallbacks}")
    click.echo(f"  tuned on     {v.tuned_on or '-'}   created {v.created or '-'}")
    click.echo(f"  weights      {v.weights_snapshot_id or 'no snapshot (local variant)'}, {v.weights_size_gib} GiB volume")
    click.echo(f"  concurrency  {v.target_concurrency} in flight per replica")
    engine = {k: val for k, val in data["engine"].items() if val not in (None, (), [])}
    for key, value in engine.items():
        click.echo(f"  engine.{key:<22} {json.dumps(value) if isinstance(value, dict | list) else value}")
    for key, value in sorted(v.benchmark.items()):
        click.echo(f"  benchmark.{key:<19} {value:g}")
