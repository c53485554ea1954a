"""The AWS key store: a DynamoDB table created by the stack's Keys component.

Schema (shared with components/keys.py, which also writes the initial key's item):
partition key ``key_hash`` (S); attributes endpoint, kind, plan, prefix, last4 (S), created_at (N),
and optional expires_at, revoked_at, rate_per_min, daily_cap (N), rotated_from, name (S); a GSI
``endpoint-index`` on ``endpoint``. A missing optional attribute means None.

boto3 is built from the standard AWS environment (credentials chain, AWS_REGION /
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), so the same code runs against AWS and moto's server.
Reads of single keys are strongly consistent, so a revocation is visible to the next uncached
get(); the gate's cache bounds it (CachedKeyStore).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from runtime.gate.keys._format import hashes_equal, is_key_hash
from runtime.gate.keys._record import KeyRecord, check_endpoint
from runtime.gate.keys._store import (
    DEFAULT_GRACE_S,
    KEEP_LIFETIME,
    Clock,
    Expiry,
    KeyStoreUnavailable,
    check_grace,
    matches_ident,
    new_key_record,
    parse_ident,
    pick_one,
    plan_rotation,
    rotated_expiry,
)
from warmstart.errors import ConfigError, OperationError

ENDPOINT_INDEX = "endpoint-index"
_TABLE_RE = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_STRINGS = ("key_hash", "endpoint", "kind", "plan", "prefix", "last4", "rotated_from", "name")
_FLOATS = ("created_at", "expires_at", "revoked_at", "rate_per_min")
_INTS = ("daily_cap",)
_ROTATE_ATTEMPTS = 5


def _num(value: float | int) -> str:
    # repr() of a float is the shortest string that reads back as the same float.
    return repr(value) if isinstance(value, float) else str(value)


def record_to_item(record: KeyRecord) -> dict[str, dict[str, str]]:
    """The DynamoDB item of a record (low-level attribute-value form); None attributes are omitted."""
    item: dict[str, dict[str, str]] = {}
    for field, value in record.to_dict().items():
        if value is None:
            continue
        item[field] = {"S": value} if field in _STRINGS else {"N": _num(value)}
    return item


def item_to_record(item: dict[str, dict[str, str]]) -> KeyRecord:
    fields: dict[str, Any] = {}
    try:
        for name in _STRINGS:
            if name in item:
                fields[name] = item[name]["S"]
        for name in _FLOATS:
            if name in item:
                fields[name] = float(item[name]["N"])
        for name in _INTS:
            if name in item:
                fields[name] = int(float(item[name]["N"]))  # "100" or "100.0" from other writers
        return KeyRecord(**fields)
    except (KeyError, TypeError, ValueError) as e:
        key_hash = item.get("key_hash", {}).get("S", "?")
        raise OperationError(
            f"key item {key_hash[:12]}… in DynamoDB is malformed ({e}); fix or delete the item"
        ) from None


class DynamoKeyStore:
    def __init__(self, table: str, *, clock: Clock = time.time) -> None:
        if not _TABLE_RE.fullmatch(table):
            raise ConfigError(
                f"keys={'dynamodb:' + table!r} names no valid table; use dynamodb:TABLE "
                "(3-255 letters, digits, '_', '-', '.')"
            )
        import boto3.session
        import botocore.config
        import botocore.exceptions

        self.table = table
        self._clock = clock
        self._errors = botocore.exceptions
        # Bounded timeouts: the gate reads keys on the request path (through its cache), and a hung
        # connection must become a 503 in seconds, not a minute. Retries follow the environment.
        config = botocore.config.Config(connect_timeout=3, read_timeout=5)
        try:
            # A session of its own: boto3's default session caches credentials once resolved, and a
            # store must reflect the environment as it is when the store is opened.
            self._client: Any = boto3.session.Session().client("dynamodb", config=config)
        except botocore.exceptions.NoRegionError:
            raise ConfigError(
                f"keys={'dynamodb:' + table!r} needs an AWS region; set AWS_REGION (or AWS_DEFAULT_REGION)"
            ) from None

    def __repr__(self) -> str:
        return f"DynamoKeyStore({self.table!r})"

    def close(self) -> None:
        self._client.close()

    def _call(self, op: str, *, expected: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """One DynamoDB call. ClientErrors whose code is in ``expected`` reach the caller; every other
        failure becomes a one-line ConfigError (fixable by the user) or KeyStoreUnavailable."""
        where = f"keys={'dynamodb:' + self.table!r}"
        try:
            return getattr(self._client, op)(**kwargs)
        except self._errors.ClientError as e:
            error = e.response.get("Error", {})
            code = error.get("Code", "")
            if code in expected:
                raise
            if code == "ResourceNotFoundException":
                raise ConfigError(
                    f"{where}: no such table in this account/region; "
                    "deploy the stack's Keys component or fix the table name"
                ) from None
            message = " ".join(str(error.get("Message", "")).split())
            raise KeyStoreUnavailable(f"{where}: DynamoDB {op} failed: {code}: {message}") from None
        except self._errors.NoCredentialsError:
            raise ConfigError(
                f"{where}: no AWS credentials found; configure a profile or role (AWS_PROFILE, ...)"
            ) from None
        except self._errors.BotoCoreError as e:
            reason = " ".join(str(e).split())
            raise KeyStoreUnavailable(f"{where}: DynamoDB {op} failed: {reason}") from None

    # -- the contract ---------------------------------------------------------------------------

    def get(self, key_hash: str) -> KeyRecord | None:
        if not is_key_hash(key_hash):
            return None
        response = self._call(
            "get_item", TableName=self.table, Key={"key_hash": {"S": key_hash}}, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None:
            return None
        record = item_to_record(item)
        return record if hashes_equal(record.key_hash, key_hash) else None

    def create(
        self,
        *,
        endpoint: str,
        kind: str = "api",
        plan: str = "pro",
        expires_at: float | None = None,
        rate_per_min: float | None = None,
        daily_cap: int | None = None,
        name: str | None = None,
        rotated_from: str | None = None,
    ) -> tuple[str, KeyRecord]:
        key, record = new_key_record(
            now=self._clock(), endpoint=endpoint, kind=kind, plan=plan, expires_at=expires_at,
            rate_per_min=rate_per_min, daily_cap=daily_cap, name=name, rotated_from=rotated_from,
        )
        try:
            self._call(
                "put_item", expected=("ConditionalCheckFailedException",),
                TableName=self.table, Item=record_to_item(record),
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": "key_hash"},
            )
        except self._errors.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise OperationError(f"key {record.display} already exists; create again") from None
            raise
        return key, record

    def list(self, endpoint: str | None = None) -> list[KeyRecord]:
        if endpoint is None:
            items = self._paginate("scan", TableName=self.table)
        else:
            check_endpoint(endpoint)
            items = self._paginate(
                "query", TableName=self.table, IndexName=ENDPOINT_INDEX,
                KeyConditionExpression="#e = :e", ExpressionAttributeNames={"#e": "endpoint"},
                ExpressionAttributeValues={":e": {"S": endpoint}},
            )
        return sorted(map(item_to_record, items), key=lambda r: (r.created_at, r.key_hash))

    def revoke(self, ident: str) -> KeyRecord:
        record = self._resolve(ident)
        if record.revoked_at is not None:
            return record
        now = self._clock()
        try:
            self._call(
                "update_item", expected=("ConditionalCheckFailedException",), TableName=self.table, Key={"key_hash": {"S": record.key_hash}},
                UpdateExpression="SET #r = :now",
                ConditionExpression="attribute_exists(#k) AND attribute_not_exists(#r)",
                ExpressionAttributeNames={"#k": "key_hash", "#r": "revoked_at"},
                ExpressionAttributeValues={":now": {"N": _num(now)}},
            )
        except self._errors.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # Revoked by someone else in between (or deleted): report what is there now.
            current = self.get(record.key_hash)
            if current is None:
                raise OperationError(f"key {record.display} was deleted while revoking it") from None
            return current
        return replace(record, revoked_at=now)

    def rotate(
        self, ident: str, grace_s: float = DEFAULT_GRACE_S, *, expires_at: Expiry = KEEP_LIFETIME
    ) -> tuple[str, KeyRecord]:
        check_grace(grace_s)  # bad input is refused before anything is looked up
        old = self._resolve(ident)
        for _ in range(_ROTATE_ATTEMPTS):
            now = self._clock()
            old_until = plan_rotation(old, now, grace_s)
            key, record = new_key_record(
                now=now, endpoint=old.endpoint, kind=old.kind, plan=old.plan,
                expires_at=rotated_expiry(old, now, expires_at), rate_per_min=old.rate_per_min,
                daily_cap=old.daily_cap, name=old.name, rotated_from=old.key_hash,
            )
            # Both writes in one transaction, conditional on the old key being exactly as read:
            # a concurrent revoke or rotate makes us re-read instead of overwriting it.
            if old.expires_at is None:
                unchanged = "attribute_not_exists(#x)"
                values: dict[str, dict[str, str]] = {":until": {"N": _num(old_until)}}
            else:
                unchanged = "#x = :seen"
                values = {":until": {"N": _num(old_until)}, ":seen": {"N": _num(old.expires_at)}}
            try:
                self._call("transact_write_items", expected=("TransactionCanceledException",), TransactItems=[
                    {"Put": {
                        "TableName": self.table, "Item": record_to_item(record),
                        "ConditionExpression": "attribute_not_exists(#k)",
                        "ExpressionAttributeNames": {"#k": "key_hash"},
                    }},
                    {"Update": {
                        "TableName": self.table, "Key": {"key_hash": {"S": old.key_hash}},
                        "UpdateExpression": "SET #x = :until",
                        "ConditionExpression": (
                            f"attribute_exists(#k) AND attribute_not_exists(#r) AND {unchanged}"
                        ),
                        "ExpressionAttributeNames": {"#k": "key_hash", "#r": "revoked_at", "#x": "expires_at"},
                        "ExpressionAttributeValues": values,
                    }},
                ])
                return key, record
            except self._errors.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                current = self.get(old.key_hash)
                if current is None:
                    raise OperationError(f"key {old.display} was deleted while rotating it") from None
                old = current  # plan_rotation re-checks revoked/expired on the next pass
        raise OperationError(f"key {old.display} kept changing while rotating it; try again")

    # -- helpers --------------------------------------------------------------------------------

    def _paginate(self, op: str, **kwargs: Any) -> Iterator[dict[str, dict[str, str]]]:
        while True:
            page = self._call(op, **kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def _resolve(self, ident: str) -> KeyRecord:
        parsed = parse_ident(ident)
        if parsed.key_hash is not None:
            found = self.get(parsed.key_hash)
            return pick_one(ident, [found] if found else [])
        assert parsed.prefix is not None
        filter_expr = "begins_with(#p, :p)"
        names = {"#p": "prefix"}
        values = {":p": {"S": parsed.prefix}}
        if parsed.last4 is not None:
            filter_expr += " AND #l = :l"
            names["#l"] = "last4"
            values[":l"] = {"S": parsed.last4}
        # A scan: identifiers are resolved by the CLI (rarely), never on the request path.
        items = self._paginate(
            "scan", TableName=self.table, FilterExpression=filter_expr,
            ExpressionAttributeNames=names, ExpressionAttributeValues=values, ConsistentRead=True,
        )
        return pick_one(ident, [r for r in map(item_to_record, items) if matches_ident(r, parsed)])
