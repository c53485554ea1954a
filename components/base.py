"""Small helpers every component uses: tags, child options, IAM documents, ARNs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

Tags = Mapping[str, str]

# Every taggable resource carries these (stacks/policy.py checks it).
REQUIRED_TAGS = ("endpoint", "environment", "variant")


def standard_tags(environment: str, endpoint: str, variant: str) -> dict[str, str]:
    return {"endpoint": endpoint, "environment": environment, "variant": variant, "managed-by": "warmstart"}


def named(tags: Tags, name: str) -> dict[str, str]:
    return {**tags, "Name": name}


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def invoke(parent: pulumi.Resource) -> pulumi.InvokeOutputOptions:
    return pulumi.InvokeOutputOptions(parent=parent)


def asg_tags(tags: Tags) -> list[aws.autoscaling.GroupTagArgs]:
    """ASG tags, propagated to the instances it launches."""
    return [aws.autoscaling.GroupTagArgs(key=k, value=v, propagate_at_launch=True) for k, v in sorted(tags.items())]


def statement(actions: Sequence[str], resources: Sequence[str], sid: str,
              condition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": list(resources)}
    if condition:
        st["Condition"] = dict(condition)
    return st


def policy_document(statements: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)}, sort_keys=True)


def assume_role_policy(service: str) -> str:
    return policy_document([{
        "Sid": "AssumeByService", "Effect": "Allow", "Action": ["sts:AssumeRole"],
        "Principal": {"Service": service},
    }])


def ecr_repository_arn(image_uri: str) -> str | None:
    """arn of the ECR repository an image URI points at; None for other registries."""
    host, _, rest = image_uri.partition("/")
    parts = host.split(".")
    if len(parts) < 6 or parts[1:3] != ["dkr", "ecr"]:
        return None
    account, region = parts[0], parts[3]
    repo = rest.split("@", 1)[0].rsplit(":", 1)[0]
    return f"arn:aws:ecr:{region}:{account}:repository/{repo}"


def image_pull_statements(image_uri: str) -> list[dict[str, Any]]:
    repo = ecr_repository_arn(image_uri)
    if repo is None:
        return []
    return [
        # GetAuthorizationToken has no resource-level permissions: AWS requires "*".
        statement(["ecr:GetAuthorizationToken"], ["*"], "EcrLogin"),
        # What `docker pull` calls: the manifest, then each layer's URL (BatchCheckLayerAvailability
        # is a push-side call).
        statement(["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], [repo], "EcrPull"),
    ]


def asg_arn(region: str, account: pulumi.Input[str], asg_name: str) -> pulumi.Output[str]:
    return pulumi.Output.concat(
        "arn:aws:autoscaling:", region, ":", account, ":autoScalingGroup:*:autoScalingGroupName/", asg_name
    )


def instance_arch(instance_type: str) -> str:
    """arm64 for Graviton families (c7g, m7g, t4g, ...), x86_64 otherwise."""
    family = instance_type.split(".", 1)[0]
    return "arm64" if family.rstrip("dnei").endswith("g") and family[0] in "cmrtx" else "x86_64"
