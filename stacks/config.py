"""A stack's configuration, validated before any resource is declared.

The same parser serves `pulumi up` (values from pulumi.Config) and the offline preview (values
read from stacks/Pulumi.<env>.yaml), so what the preview checks is what a deploy checks.

Keys (all in stacks/Pulumi.<env>.yaml under `config:`):

    aws:region               region of every resource
    warmstart:environment    dev | staging | prod (or any name); part of every physical name
    warmstart:endpoints      list of endpoints; each entry's fields are exactly EndpointConfig's
    warmstart:substrate      ec2 (default) | eks (components/eks_deployment.py; settings under warmstart:eks)
    warmstart:imageUri       the runtime image replicas run (build runtime/image, push to ECR)
    warmstart:gateImageUri   the slim gate image gates run; default: repository warmstart-gate beside
                             the runtime image's warmstart-runtime, same registry and tag
    warmstart:ebsKmsKeyArns  customer-managed KMS keys the instances' volumes are encrypted with (the
                             account's default EBS key, a weights snapshot's key): Auto Scaling's
                             service-linked role gets a grant on each
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from warmstart.errors import ConfigError
from warmstart.spec import EndpointConfig, Variant, _check_name, load_variant, parse_endpoint

STACK_DIR = Path(__file__).resolve().parent
SUBSTRATES = ("ec2", "eks")
# The two images runtime/image builds, pushed side by side under one tag.
RUNTIME_REPOSITORY = "warmstart-runtime"
GATE_REPOSITORY = "warmstart-gate"

# Stack-level keys, documented once: docs/configuration.md is generated from this.
STACK_KEYS: dict[str, str] = {
    "aws:region": "AWS region of every resource (required)",
    "warmstart:environment": "environment name (dev, staging, prod, ...); part of every physical resource name (required)",
    "warmstart:endpoints": "list of endpoints; each entry takes the endpoint keys below (required, at least one)",
    "warmstart:substrate": "where replicas run: `ec2` (default) or `eks` (settings under `warmstart:eks`)",
    "warmstart:imageUri": "runtime image (ECR URI) replicas run; build it from runtime/image (required)",
    "warmstart:gateImageUri": (f"slim gate image (ECR URI) the gate instances run; default: repository "
                               f"`{GATE_REPOSITORY}` beside the runtime image's `{RUNTIME_REPOSITORY}`, same tag"),
    "warmstart:ebsKmsKeyArns": ("customer-managed KMS key ARNs that encrypt the instances' volumes (the account's "
                                "default EBS key if it is one, a weights snapshot's key): the Auto Scaling "
                                "service-linked role gets a grant on each, or every launch fails"),
}
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[0-9a-zA-Z-]+$")


@dataclass(frozen=True)
class StackConfig:
    environment: str
    region: str
    substrate: str
    image_uri: str
    endpoints: tuple[EndpointConfig, ...]
    variants: dict[str, Variant]
    gate_image_uri: str = ""
    ebs_kms_key_arns: tuple[str, ...] = ()

    def variant_of(self, endpoint: EndpointConfig) -> Variant:
        return self.variants[endpoint.variant]

    def image_for(self, endpoint: EndpointConfig) -> str:
        """The endpoint's own image_uri, else the stack's warmstart:imageUri."""
        return endpoint.image_uri or self.image_uri

    def gate_image_for(self, endpoint: EndpointConfig) -> str:
        """warmstart:gateImageUri, else the gate image beside the endpoint's runtime image."""
        derived = gate_image_beside(self.image_for(endpoint))
        return self.gate_image_uri or derived or ""


def gate_image_beside(runtime_image: str) -> str | None:
    """`<registry>/<path>/warmstart-gate:<tag>` for `<registry>/<path>/warmstart-runtime:<tag>`
    (or @digest: a digest names one image, so there is nothing to derive); None otherwise."""
    registry_path, sep, repo_tag = runtime_image.rpartition("/")
    repo, colon, tag = repo_tag.partition(":")
    if repo != RUNTIME_REPOSITORY or "@" in repo_tag:
        return None
    return f"{registry_path}{sep}{GATE_REPOSITORY}{colon}{tag}"


def _value(values: Mapping[str, Any], key: str) -> Any:
    """Pulumi hands structured values over as JSON strings; the stack file gives them parsed."""
    v = values.get(key)
    if isinstance(v, str) and key == "warmstart:endpoints":
        try:
            return json.loads(v)
        except ValueError:
            raise ConfigError(f"{key} is not valid JSON; give a list of endpoint objects") from None
    return v


def parse_stack_config(values: Mapping[str, Any], source: str = "stack config",
                       variants_root: Path | None = None) -> StackConfig:
    env = values.get("warmstart:environment")
    if not env:
        raise ConfigError(f"{source}: warmstart:environment is not set; set it to dev, staging or prod")
    try:
        _check_name("warmstart:environment", str(env))
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    region = values.get("aws:region")
    if not region:
        raise ConfigError(f"{source}: aws:region is not set; set it, e.g. aws:region: us-east-1")
    if not _REGION.match(str(region)):
        raise ConfigError(f"{source}: aws:region={region!r} is not an AWS region; use e.g. us-east-1")
    substrate = str(values.get("warmstart:substrate") or "ec2")
    if substrate not in SUBSTRATES:
        raise ConfigError(
            f"{source}: warmstart:substrate={substrate!r} is not available; use one of {', '.join(SUBSTRATES)}"
        )
    image_uri = values.get("warmstart:imageUri") or ""
    gate_image = values.get("warmstart:gateImageUri") or ""
    kms_keys = _kms_keys(values.get("warmstart:ebsKmsKeyArns"), source)
    raw = _value(values, "warmstart:endpoints")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: warmstart:endpoints must be a non-empty list of endpoints; add one")
    endpoints: list[EndpointConfig] = []
    variants: dict[str, Variant] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: warmstart:endpoints[{i}] is not a mapping of endpoint settings")
        data = dict(item)
        if data.setdefault("environment", env) != env:
            raise ConfigError(
                f"{source}: endpoint {data.get('name', i)} has environment={data['environment']!r} in stack "
                f"environment {env!r}; remove its environment key"
            )
        try:
            ep = parse_endpoint(data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        if ep.name in {e.name for e in endpoints}:
            raise ConfigError(f"{source}: endpoint name {ep.name!r} appears twice; names must be unique")
        try:
            variant = variants.get(ep.variant) or load_variant(ep.variant, variants_root)
        except ConfigError as e:
            raise ConfigError(f"{source}: endpoint {ep.name}: {e}") from None
        if not variant.on_gpu:
            raise ConfigError(
                f"{source}: endpoint {ep.name} uses variant {variant.name!r} with gpu.instance_type='cpu' "
                "(local only); pick a GPU variant for AWS"
            )
        if variant.weights_snapshot_id is None:
            raise ConfigError(
                f"{source}: variant {variant.name!r} has no weights_snapshot_id; run `warmstart weights "
                f"build {variant.name}` and record the snapshot id in its YAML"
            )
        if not (ep.image_uri or image_uri):
            raise ConfigError(
                f"{source}: warmstart:imageUri is not set (nor endpoint {ep.name}'s image_uri); build "
                "runtime/image, push it to ECR and set warmstart:imageUri to its URI"
            )
        if substrate == "ec2" and not gate_image and not gate_image_beside(ep.image_uri or str(image_uri)):
            raise ConfigError(
                f"{source}: warmstart:gateImageUri is not set and endpoint {ep.name}'s runtime image "
                f"{ep.image_uri or image_uri!r} is not in a repository named {RUNTIME_REPOSITORY}; push the "
                f"gate image (runtime/image, target gate) and set warmstart:gateImageUri to its URI"
            )
        variants[variant.name] = variant
        endpoints.append(ep)
    return StackConfig(
        environment=str(env), region=str(region), substrate=substrate, image_uri=str(image_uri),
        endpoints=tuple(endpoints), variants=variants, gate_image_uri=str(gate_image), ebs_kms_key_arns=kms_keys,
    )


def _kms_keys(raw: Any, source: str) -> tuple[str, ...]:
    if raw in (None, "", []):
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.lstrip().startswith("[") else [raw]
        except ValueError:
            raise ConfigError(f"{source}: warmstart:ebsKmsKeyArns is not valid JSON; give a list of key ARNs") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: warmstart:ebsKmsKeyArns must be a list of KMS key ARNs")
    for k in raw:
        if not isinstance(k, str) or not _KMS_KEY_ARN.match(k):
            raise ConfigError(
                f"{source}: warmstart:ebsKmsKeyArns has {k!r}, not a KMS key ARN; use "
                "arn:aws:kms:REGION:ACCOUNT:key/KEY-ID (aliases cannot be granted on)"
            )
    return tuple(raw)


def stack_file(stack: str, stack_dir: Path | None = None) -> Path:
    root = stack_dir or STACK_DIR
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))) or "none"
        raise ConfigError(f"stack={stack!r} has no file {path}; use one of: {known}")
    return path


def read_stack_file(stack: str, stack_dir: Path | None = None) -> dict[str, Any]:
    """The `config:` mapping of stacks/Pulumi.<stack>.yaml, values as written."""
    path = stack_file(stack, stack_dir)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a top-level `config:` mapping")
    return config


def load_stack(stack: str, stack_dir: Path | None = None, variants_root: Path | None = None) -> StackConfig:
    path = stack_file(stack, stack_dir)
    return parse_stack_config(read_stack_file(stack, stack_dir), source=str(path), variants_root=variants_root)


def from_pulumi() -> StackConfig:
    """The running stack's configuration (inside `pulumi up` or the mocked preview)."""
    import pulumi

    ws = pulumi.Config("warmstart")
    values: dict[str, Any] = {
        "aws:region": pulumi.Config("aws").get("region"),
        "warmstart:environment": ws.get("environment"),
        "warmstart:endpoints": ws.get("endpoints"),
        "warmstart:substrate": ws.get("substrate"),
        "warmstart:imageUri": ws.get("imageUri"),
        "warmstart:gateImageUri": ws.get("gateImageUri"),
        "warmstart:ebsKmsKeyArns": ws.get("ebsKmsKeyArns"),
    }
    return parse_stack_config(values, source=f"stack {pulumi.get_stack()}")
