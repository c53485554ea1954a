"""`warmstart weights build|verify`: a variant's weight cache (what its EBS snapshot holds)."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from runtime.replica import weights as cache
from warmstart.errors import OperationError
from warmstart.spec import load_variant


def _say(msg: str) -> None:
    click.echo(f"==> {msg}", err=True)


@click.group()
def weights() -> None:
    """Build and verify a variant's weight cache (safetensors + tokenizer + manifest)."""


@weights.command()
@click.option("--variant", required=True, help="variant name under variants/")
@click.option("--dest", type=click.Path(path_type=Path), help="cache directory (default .warmstart/weights/<model>)")
@click.option("--source", help="override the variant's model: a folder, s3://BUCKET/PREFIX or bundled:NAME")
@click.option("--force", is_flag=True, help="rebuild even if the cache verifies")
@click.option("--snapshot", is_flag=True, help="then put the cache on an EBS snapshot (AWS)")
@click.option("--region", help="--snapshot: AWS region")
@click.option("--fast-snapshot-restore", "fsr_azs", multiple=True, metavar="AZ",
              help="--snapshot: enable Fast Snapshot Restore in this AZ (repeatable)")
def build(variant: str, dest: Path | None, source: str | None, force: bool, snapshot: bool,
          region: str | None, fsr_azs: tuple[str, ...]) -> None:
    """Materialize VARIANT's weights into a verified cache directory."""
    if (region or fsr_azs) and not snapshot:
        raise OperationError("--region/--fast-snapshot-restore only apply with --snapshot; add --snapshot")
    v = load_variant(variant)
    src = source or v.model
    out = dest or cache.cache_dir_for(v.model)
    if force:
        path = cache.hydrate(src, out, model=v.model, progress=_say)
    else:
        path = cache.ensure(src, out, model=v.model, progress=_say)
    manifest = cache.read_manifest(path)
    size = sum(int(f["size"]) for f in manifest["files"].values())
    click.echo(f"CACHE={path}")
    click.echo(f"FILES={len(manifest['files'])} BYTES={size}")
    if snapshot:
        try:
            mod = importlib.import_module("warmstart.ops.snapshot")
        except ModuleNotFoundError as e:
            if e.name and "warmstart.ops" in e.name:
                raise OperationError(
                    "--snapshot needs warmstart.ops.snapshot (the fleet tooling), which this build lacks"
                ) from None
            raise
        snap = mod.build_snapshot(v, path, region=region, fast_snapshot_restore_azs=fsr_azs, progress=_say)
        click.echo(f"SNAPSHOT={snap}")


@weights.command()
@click.option("--variant", help="variant whose default cache to check")
@click.option("--dest", type=click.Path(path_type=Path), help="cache directory to check")
@click.option("--quick", is_flag=True, help="sizes only (skip sha256)")
def verify(variant: str | None, dest: Path | None, quick: bool) -> None:
    """Check a cache against its manifest; exit 1 and name each bad file if it fails."""
    if not (variant or dest):
        raise OperationError("name the cache: --variant NAME or --dest DIR")
    path = dest or cache.cache_dir_for(load_variant(str(variant)).model)
    verdict = cache.verify(path, deep=not quick)
    if verdict.ok:
        click.echo(f"ok: {path} matches its manifest")
        return
    for p in verdict.problems:
        click.echo(f"bad: {p}", err=True)
    click.echo(f"{path}: corrupted or incomplete; rebuild with `warmstart weights build --variant NAME`", err=True)
    raise SystemExit(1)
