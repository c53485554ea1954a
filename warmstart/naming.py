"""Physical names shared by the components that create resources and the commands that operate
on them. The Pulumi program names these resources explicitly (not auto-named) so that
`warmstart endpoint ... --stack ENV` can find them with boto3 alone, without the Pulumi CLI.
Changing one of these renames (replaces) real infrastructure: treat them as a contract.
"""

from __future__ import annotations


def prefix(environment: str, endpoint: str) -> str:
    return f"ws-{environment}-{endpoint}"


def replica_asg_name(environment: str, endpoint: str) -> str:
    return f"{prefix(environment, endpoint)}-replicas"


def gate_asg_name(environment: str, endpoint: str) -> str:
    return f"{prefix(environment, endpoint)}-gate"


def replica_launch_template_name(environment: str, endpoint: str) -> str:
    return f"{prefix(environment, endpoint)}-replica"


def keys_table_name(environment: str, endpoint: str) -> str:
    return f"{prefix(environment, endpoint)}-keys"


def gate_config_parameter(environment: str, endpoint: str) -> str:
    return f"/warmstart/{environment}/{endpoint}/gate-config"


def replica_log_group(environment: str, endpoint: str) -> str:
    return f"/warmstart/{environment}/{endpoint}/replicas"


def gate_log_group(environment: str, endpoint: str) -> str:
    return f"/warmstart/{environment}/{endpoint}/gate"


METRIC_NAMESPACE = "Warmstart"
"""CloudWatch namespace of the gate's custom metrics (InFlight, InFlightPerReplica, ...)."""
