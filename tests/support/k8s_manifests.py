"""Kubernetes manifests out of a recorded Pulumi graph, and their schema check.

The schema is the `kubernetes` client's own model classes (generated from the API server's
OpenAPI document): every key of a manifest must be a field of its model, every value must have the
field's type, every required field must be there, and the client's own validators (required
fields, enums) run by deserializing into the model. No hand-written schema to drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client

from stacks.preview import Graph, Resource

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value
_MODELS: Any = k8s_client.models
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "object": (object,),
    "datetime": (str,), "date": (str,),
}


def unsecret(value: Any) -> Any:
    """The plain value inside Pulumi's secret wrapper; integral floats (from the wire) back to ints."""
    if isinstance(value, dict):
        if SECRET_SIG in value and "value" in value:
            return unsecret(value["value"])
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def is_kubernetes(r: Resource) -> bool:
    return r.type.startswith("kubernetes:") and not r.type.startswith("kubernetes:helm")


def manifests(graph: Graph) -> list[dict[str, Any]]:
    """Every Kubernetes object the graph declares, as the API server would receive it."""
    return [unsecret(r.inputs) for r in graph if is_kubernetes(r) and r.custom and not r.read]


def model_name(api_version: str, kind: str) -> str:
    version = api_version.rsplit("/", 1)[-1]
    return f"{version[0].upper()}{version[1:]}{kind}"


def _required(cls: Any) -> set[str]:
    """Fields whose setter refuses None under client-side validation."""
    cfg = k8s_client.Configuration()
    cfg.client_side_validation = True
    inst = cls.__new__(cls)
    inst.local_vars_configuration = cfg
    out = set()
    for attr in cls.openapi_types:
        try:
            setattr(inst, attr, None)
        except ValueError:
            out.add(attr)
    return out


def validate(data: Any, type_name: str, path: str = "") -> list[str]:
    """Errors of `data` against the client model `type_name` (e.g. 'V1Deployment')."""
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [e for i, item in enumerate(data) for e in validate(item, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"dict[(\[]([^,]+), (.+)[)\]]", type_name):
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping, got {type(data).__name__}"]
        return [e for k, v in data.items() for e in validate(v, m.group(2), f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name]) and not (type_name in ("int", "float") and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    cls = getattr(_MODELS, type_name, None)
    if cls is None:
        return [f"{path}: the client has no model {type_name}"]
    if not isinstance(data, dict):
        return [f"{path}: expected an object ({type_name}), got {type(data).__name__}"]
    by_json = {v: k for k, v in cls.attribute_map.items()}
    errors: list[str] = []
    for key, value in data.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        elif value is not None:
            errors += validate(value, cls.openapi_types[attr], f"{path}.{key}")
    for attr in sorted(_required(cls)):
        if data.get(cls.attribute_map[attr]) is None:
            errors.append(f"{path}.{cls.attribute_map[attr]}: required by {type_name}")
    return errors


def validate_manifest(manifest: dict[str, Any]) -> list[str]:
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    name = (manifest.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    if not api_version or not kind:
        return [f"{where}: apiVersion and kind are required"]
    if not name:
        return [f"{where}: metadata.name is required (physical names are a contract)"]
    type_name = model_name(str(api_version), str(kind))
    errors = [f"{where}{e}" for e in validate(manifest, type_name)]
    if not errors:
        # The client's own validators (enums, formats) run while it builds the model object.
        api = k8s_client.ApiClient()
        try:
            api._ApiClient__deserialize(manifest, type_name)
        except ValueError as e:
            errors.append(f"{where}: {e}")
    return errors


def write_yaml(docs: Iterable[dict[str, Any]], directory: Path) -> list[Path]:
    """One file per object (what checkov and kubectl read)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        meta = doc.get("metadata") or {}
        name = f"{i:03d}-{doc['kind'].lower()}-{meta.get('namespace', 'cluster')}-{meta.get('name')}.yaml"
        path = directory / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    return paths
