"""boto3 clients for the operations, built the one way everything here builds them.

Clients come from boto3's default session so the standard AWS environment applies unchanged
(profiles, AWS_REGION, AWS_ENDPOINT_URL for moto or LocalStack). Retries use botocore's
"standard" mode: throttling on Describe* calls during an incident must not fail a command.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from warmstart.errors import OperationError

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


def client(service: str, region: str | None = None) -> Any:
    try:
        return boto3.client(service, region_name=region, config=_CONFIG)
    except NoRegionError:
        raise OperationError(
            "no AWS region is configured; pass --region R or set AWS_REGION (or aws:region in the stack)"
        ) from None


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def describe(err: BotoCoreError | ClientError) -> str:
    """One line for a failed AWS call (the CLI prints it; never a traceback)."""
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        return f"{e.get('Code', 'Error')}: {e.get('Message', '')}".strip()
    return str(err)
