"""The shared fixtures themselves work against the real services."""

import boto3
import redis


def test_redis_fixture_is_a_real_server(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_moto_fixture_serves_boto3_over_http(aws_env: str) -> None:
    ddb = boto3.client("dynamodb")
    assert ddb.meta.endpoint_url == aws_env
    ddb.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert boto3.client("dynamodb").list_tables()["TableNames"] == ["t"]


def test_moto_fixture_resets_between_tests(aws_env: str) -> None:
    assert boto3.client("dynamodb").list_tables()["TableNames"] == []
