"""`warmstart keys create|list|revoke|rotate`: API keys in a key store (sqlite or DynamoDB).

A new key is printed once, alone on stdout (so `KEY=$(warmstart keys create ...)` works), with a
one-line warning on stderr; afterwards only its display form (``ws_live_1a2b…9f3c``) is shown.
Flags are taken as strings and parsed here, so a bad value is one line naming it and the fix
(exit 2) rather than a usage screen.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click

from runtime.gate.keys import KEEP_LIFETIME, Expiry, KeyRecord, KeyStore, open_key_store
from runtime.gate.keys.parse import parse_daily_cap, parse_duration, parse_expires, parse_rate
from warmstart.errors import ConfigError

DEFAULT_KEYS = "sqlite:.warmstart/keys.db"

_keys_option = click.option(
    "--keys", "keys_url", default=DEFAULT_KEYS, show_default=True, envvar="WARMSTART_KEYS",
    metavar="sqlite:PATH|dynamodb:TABLE", help="Key store (env WARMSTART_KEYS).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _printable(text: str | None) -> str | None:
    # Names written by other tools could carry control characters; never send those to a terminal.
    return text if text is None or text.isprintable() else repr(text)


def _open(url: str, *, create: bool = False) -> KeyStore:
    # Only `create` may bring a new sqlite file into being: `list` on a mistyped path should say
    # so, not show an empty table.
    return open_key_store(url, create=create)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _describe(record: KeyRecord, now: float) -> str:
    limits = []
    if record.rate_per_min is not None:
        limits.append(f"rate {record.rate_per_min:g}/min")
    if record.daily_cap is not None:
        limits.append(f"daily cap {record.daily_cap}")
    return (
        f"{record.display} endpoint={record.endpoint} kind={record.kind} plan={record.plan} "
        f"expires={_when(record.expires_at)} {' '.join(limits)}".rstrip()
    )


def _show_new_key(key: str, record: KeyRecord, now: float, as_json: bool, extra: dict[str, Any]) -> None:
    if as_json:
        _emit_json({"key": key, "record": record.public_dict(now), **extra})
    else:
        click.echo(key)
    click.echo(
        f"warning: this key is shown only now and cannot be recovered; store it securely ({_describe(record, now)})",
        err=True,
    )


@click.group()
def keys() -> None:
    """Create, list, revoke and rotate API keys (stored only as SHA-256)."""


@keys.command()
@_keys_option
@click.option("--endpoint", default=None, help="Endpoint the key is scoped to (required).")
@click.option("--kind", default="api", show_default=True, metavar="api|playground")
@click.option("--plan", default="pro", show_default=True, metavar="PLAN")
@click.option("--expires", default="never", show_default=True, metavar="30d|2026-12-31|never")
@click.option("--rate", default=None, metavar="N/min", help="Per-key request rate, e.g. 60/min.")
@click.option("--daily-cap", default=None, metavar="N", help="Requests per UTC day.")
@click.option("--name", default=None, help="A label shown by `keys list`.")
@_json_option
def create(
    keys_url: str, endpoint: str | None, kind: str, plan: str, expires: str, rate: str | None,
    daily_cap: str | None, name: str | None, as_json: bool,
) -> None:
    """Mint a key and print it once."""
    if not endpoint:
        raise ConfigError("--endpoint is required; pass --endpoint NAME (the endpoint the key may call)")
    now = time.time()
    store = _open(keys_url, create=True)
    try:
        key, record = store.create(
            endpoint=endpoint, kind=kind, plan=plan, expires_at=parse_expires(expires, now=now),
            rate_per_min=parse_rate(rate) if rate is not None else None,
            daily_cap=parse_daily_cap(daily_cap) if daily_cap is not None else None, name=name,
        )
    finally:
        store.close()
    _show_new_key(key, record, now, as_json, {})


@keys.command(name="list")
@_keys_option
@click.option("--endpoint", default=None, help="Only this endpoint's keys.")
@_json_option
def list_(keys_url: str, endpoint: str | None, as_json: bool) -> None:
    """List keys (display form only; never a key or a full hash)."""
    store = _open(keys_url)
    try:
        records = store.list(endpoint)
    finally:
        store.close()
    now = time.time()
    if as_json:
        _emit_json([r.public_dict(now) for r in records])
        return
    header = ("KEY", "ENDPOINT", "KIND", "PLAN", "STATE", "CREATED", "EXPIRES", "RATE/MIN", "DAILY", "NAME")
    rows = [header] + [
        (
            r.display, r.endpoint, r.kind, r.plan, r.state(now), _when(r.created_at), _when(r.expires_at),
            f"{r.rate_per_min:g}" if r.rate_per_min is not None else "-",
            str(r.daily_cap) if r.daily_cap is not None else "-", _printable(r.name) or "-",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@keys.command()
@_keys_option
@click.argument("ident")
@_json_option
def revoke(keys_url: str, ident: str, as_json: bool) -> None:
    """Revoke a key (IDENT: the key, or its display form ws_live_1a2b…9f3c / ws_live_1a2b...9f3c)."""
    store = _open(keys_url)
    try:
        record = store.revoke(ident)
    finally:
        store.close()
    now = time.time()
    if as_json:
        _emit_json(record.public_dict(now))
    else:
        click.echo(f"revoked {record.display} at {_when(record.revoked_at)}")


@keys.command()
@_keys_option
@click.argument("ident")
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="How long the old key keeps working (never past its own expiry).")
@click.option("--expires", default=None, metavar="30d|2026-12-31|never",
              help="The new key's expiry (default: the old key's lifetime, from now).")
@_json_option
def rotate(keys_url: str, ident: str, grace: str, expires: str | None, as_json: bool) -> None:
    """Replace a key: print the new one once; the old one works until the grace window ends."""
    grace_s = parse_duration(grace, what="--grace")
    now = time.time()
    new_expiry: Expiry = KEEP_LIFETIME if expires is None else parse_expires(expires, now=now)
    store = _open(keys_url)
    try:
        key, record = store.rotate(ident, grace_s, expires_at=new_expiry)
        old = store.get(record.rotated_from) if record.rotated_from else None
    finally:
        store.close()
    now = time.time()  # after the rotation: a zero grace shows the old key as expired
    old_info = {"old": old.public_dict(now)} if old else {}
    _show_new_key(key, record, now, as_json, old_info)
    if old is not None:
        click.echo(f"old key {old.display} stays valid until {_when(old.expires_at)}", err=True)
