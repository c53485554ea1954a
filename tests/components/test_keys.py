"""Keys: the DynamoDB table schema the gate reads, and the initial key (secret, stable)."""

from __future__ import annotations

import hashlib
import json
import re

from tests.support.pulumi_harness import stack_graph
from warmstart import naming


def test_table_schema() -> None:
    t = stack_graph("prod").one("aws:dynamodb/table:Table")
    i = t.inputs
    assert i["name"] == naming.keys_table_name("prod", "chat")
    assert i["hashKey"] == "key_hash" and i["billingMode"] == "PAY_PER_REQUEST"
    assert {"name": "key_hash", "type": "S"} in i["attributes"]
    assert {"name": "endpoint", "type": "S"} in i["attributes"]
    assert i["serverSideEncryption"] == {"enabled": True}
    assert i["pointInTimeRecovery"] == {"enabled": True}
    (gsi,) = i["globalSecondaryIndexes"]
    assert gsi["name"] == "endpoint-index"
    assert gsi["keySchemas"] == [{"attributeName": "endpoint", "keyType": "HASH"}]
    assert i["deletionProtectionEnabled"] is True
    assert stack_graph("dev").one("aws:dynamodb/table:Table").inputs["deletionProtectionEnabled"] is False


def test_initial_key_item_matches_the_exported_secret() -> None:
    g = stack_graph("prod")
    api_key = g.outputs["api_key"]
    assert api_key["secret"] is True
    key = api_key["value"]
    assert re.fullmatch(r"ws_live_[0-9a-f]{64}", key)
    item_res = g.one("aws:dynamodb/tableItem:TableItem")
    table = g.one("aws:dynamodb/table:Table")
    assert item_res.inputs["tableName"] == naming.keys_table_name("prod", "chat") == table.inputs["name"]
    assert item_res.inputs["hashKey"] == "key_hash"
    item = json.loads(item_res.inputs["item"])
    assert item["key_hash"] == {"S": hashlib.sha256(key.encode()).hexdigest()}
    assert item["endpoint"] == {"S": "chat"}
    assert item["kind"] == {"S": "api"} and item["plan"] == {"S": "team"} and item["name"] == {"S": "initial"}
    assert item["prefix"] == {"S": key[:12]} and item["last4"] == {"S": key[-4:]}
    assert int(item["created_at"]["N"]) > 1_700_000_000
    # the key itself is never stored
    assert key not in item_res.inputs["item"]


def test_initial_key_is_stable_across_updates() -> None:
    g = stack_graph("prod")
    rb = g.one("random:index/randomBytes:RandomBytes")
    assert rb.inputs["length"] == 32
    # no keepers: nothing in the config can make Pulumi replace the bytes (and so the key)
    assert not rb.inputs.get("keepers")
    # the record is written once; keys commands own it afterwards (revocations survive `pulumi up`)
    assert g.one("aws:dynamodb/tableItem:TableItem").options["ignore_changes"] == ["item"]
