"""Keys: the endpoint's DynamoDB table of API key hashes, and the one initial key.

Schema (the gate's dynamodb key store reads exactly this): partition key `key_hash` (S, the
SHA-256 hex of the full key), GSI `endpoint-index` on `endpoint` (S). The initial key is
"ws_live_" + 64 lowercase hex from pulumi-random's RandomBytes: created once, so it is stable
across `pulumi up`, and exported only as a Pulumi secret.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from components.base import Tags, child, named
from warmstart import naming

KEY_PREFIX = "ws_live_"


def key_item(key: str, endpoint: str, plan: str, created_at: int) -> str:
    """The DynamoDB item (attribute-value JSON) of a freshly minted key."""
    return json.dumps({
        "key_hash": {"S": hashlib.sha256(key.encode()).hexdigest()},
        "endpoint": {"S": endpoint},
        "kind": {"S": "api"},
        "plan": {"S": plan},
        "prefix": {"S": key[:12]},
        "last4": {"S": key[-4:]},
        "created_at": {"N": str(created_at)},
        "name": {"S": "initial"},
    }, sort_keys=True)


@dataclass
class KeysArgs:
    environment: str
    endpoint: str
    plan: str
    tags: Tags


class Keys(pulumi.ComponentResource):
    table_name: pulumi.Output[str]
    table_arn: pulumi.Output[str]
    api_key: pulumi.Output[str]

    def __init__(self, name: str, args: KeysArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:keys:Keys", name, None, opts)
        table_name = naming.keys_table_name(args.environment, args.endpoint)
        table = aws.dynamodb.Table(
            f"{name}-table",
            name=table_name,
            billing_mode="PAY_PER_REQUEST",
            hash_key="key_hash",
            attributes=[
                aws.dynamodb.TableAttributeArgs(name="key_hash", type="S"),
                aws.dynamodb.TableAttributeArgs(name="endpoint", type="S"),
            ],
            global_secondary_indexes=[aws.dynamodb.TableGlobalSecondaryIndexArgs(
                name="endpoint-index", projection_type="ALL",
                key_schemas=[aws.dynamodb.TableGlobalSecondaryIndexKeySchemaArgs(
                    attribute_name="endpoint", key_type="HASH")],
            )],
            server_side_encryption=aws.dynamodb.TableServerSideEncryptionArgs(enabled=True),
            point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(enabled=True),
            deletion_protection_enabled=args.environment == "prod",
            tags=named(args.tags, table_name),
            opts=child(self),
        )
        # No keepers: the bytes never change after creation, so neither does the key.
        secret = random.RandomBytes(f"{name}-initial", length=32, opts=child(self))
        plain: pulumi.Output[str] = pulumi.Output.concat(KEY_PREFIX, secret.hex)
        key: pulumi.Output[str] = pulumi.Output.secret(plain)
        created_at = int(time.time())
        aws.dynamodb.TableItem(
            f"{name}-initial",
            table_name=table.name,
            hash_key="key_hash",
            item=key.apply(lambda k: key_item(k, args.endpoint, args.plan, created_at)),
            # Written once; afterwards `warmstart keys` owns the record (revoke/rotate must not be
            # undone by the next `pulumi up`, and created_at must stay the first deploy's time).
            opts=child(self, ignore_changes=["item"]),
        )
        self.table_name = table.name
        self.table_arn = table.arn
        self.api_key = key
        self.register_outputs({"table_name": self.table_name})
