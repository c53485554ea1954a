"""Test helpers for code that needs API keys: the DynamoDB keys table exactly as the stack's Keys
component declares it, and ``mint_key`` for a real key in a real store.

    key = mint_key("sqlite:" + str(tmp_path / "keys.db"), "demo", rate_per_min=60)
"""

from __future__ import annotations

from typing import Any

from runtime.gate.keys import open_key_store

ENDPOINT_INDEX = "endpoint-index"


def create_keys_table(table: str, client: Any | None = None) -> None:
    """Create the keys table (partition key ``key_hash``; GSI ``endpoint-index`` on ``endpoint``,
    projecting ALL attributes so ``list(endpoint)`` returns whole records). With no client, one is
    built from the environment (the ``aws_env`` fixture points it at moto's server)."""
    if client is None:
        import boto3

        client = boto3.client("dynamodb")
    client.create_table(
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "key_hash", "AttributeType": "S"},
            {"AttributeName": "endpoint", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "key_hash", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": ENDPOINT_INDEX,
                "KeySchema": [{"AttributeName": "endpoint", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


def mint_key(store_url: str, endpoint: str, **kw: Any) -> str:
    """Create a key in the store at ``store_url`` (sqlite:PATH or dynamodb:TABLE) and return it.
    Keyword arguments are KeyStore.create's: kind, plan, expires_at, rate_per_min, daily_cap, name."""
    store = open_key_store(store_url)
    try:
        key, _ = store.create(endpoint=endpoint, **kw)
    finally:
        store.close()
    return key
