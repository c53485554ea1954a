"""Policy rules over a recorded resource graph (stacks/preview.py).

Plain functions, so tests call them on every environment and on deliberately bad resources; a
Pulumi CrossGuard pack could wrap the same functions (CrossGuard itself needs the CLI). Each rule
returns a list of violations; an empty list is a pass.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from components.base import REQUIRED_TAGS
from stacks.preview import Graph, Resource

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
SG = "aws:ec2/securityGroup:SecurityGroup"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
LB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
WORLD = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.resource}: {self.message}"


def _v(rule: str, r: Resource, message: str) -> Violation:
    return Violation(rule, f"{r.type}::{r.name}", message)


# ---------------------------------------------------------------------------------------------


def imdsv2_required(graph: Graph) -> list[Violation]:
    out = []
    for r in graph.of_type(LAUNCH_TEMPLATE):
        md = r.inputs.get("metadataOptions") or {}
        if md.get("httpTokens") != "required":
            out.append(_v("imdsv2_required", r, f"metadataOptions.httpTokens={md.get('httpTokens')!r}; set 'required'"))
    return out


def volumes_encrypted(graph: Graph) -> list[Violation]:
    """Blank volumes must say encrypted; volumes from a snapshot inherit it (EC2 refuses the flag),
    so their snapshot must be one the stack read and found encrypted."""
    out = []
    for r in graph.of_type(LAUNCH_TEMPLATE):
        for bdm in r.inputs.get("blockDeviceMappings") or []:
            ebs = bdm.get("ebs") or {}
            dev = bdm.get("deviceName")
            snap = ebs.get("snapshotId")
            if snap:
                src = graph.by_id(snap)
                if src is None or src.outputs.get("encrypted") is not True:
                    out.append(_v("volumes_encrypted", r, f"{dev} restores {snap}, not a snapshot known encrypted"))
            elif str(ebs.get("encrypted")).lower() != "true":
                out.append(_v("volumes_encrypted", r, f"{dev} has encrypted={ebs.get('encrypted')!r}; set 'true'"))
    for r in graph.of_type("aws:ebs/volume:Volume"):
        if r.inputs.get("encrypted") is not True:
            out.append(_v("volumes_encrypted", r, "encrypted is not true"))
    for r in graph.of_type("aws:elasticache/replicationGroup:ReplicationGroup"):
        if r.inputs.get("atRestEncryptionEnabled") is not True or r.inputs.get("transitEncryptionEnabled") is not True:
            out.append(_v("volumes_encrypted", r, "cache without encryption at rest and in transit"))
    return out


def _listener_ports(graph: Graph) -> dict[str, set[int]]:
    """security group id -> the listener ports of the load balancers that use it."""
    lb_ports: dict[str, set[int]] = {}
    for ln in graph.of_type(LISTENER):
        lb_ports.setdefault(str(ln.inputs.get("loadBalancerArn")), set()).add(int(ln.inputs.get("port", -1)))
    by_sg: dict[str, set[int]] = {}
    for lb in graph.of_type(LB):
        ports = lb_ports.get(str(lb.outputs.get("arn")), set())
        for sg in lb.inputs.get("securityGroups") or []:
            by_sg.setdefault(str(sg), set()).update(ports)
    return by_sg


def _ports(rule: dict[str, Any]) -> set[int]:
    lo, hi = rule.get("fromPort"), rule.get("toPort")
    if rule.get("ipProtocol", rule.get("protocol")) in ("-1", "all") or lo is None:
        return set(range(0, 65536))
    return set(range(int(lo), int(hi if hi is not None else lo) + 1))


def no_open_ingress(graph: Graph) -> list[Violation]:
    """Nothing reachable from 0.0.0.0/0 or ::/0 except an ALB's listener ports."""
    allowed = _listener_ports(graph)
    out = []

    def check(r: Resource, sg_id: str, rule: dict[str, Any], cidrs: Iterable[str]) -> None:
        world = [c for c in cidrs if c in WORLD]
        if not world:
            return
        extra = _ports(rule) - allowed.get(sg_id, set())
        if extra:
            shown = sorted(extra)[:3]
            out.append(_v("no_open_ingress", r, f"{world[0]} may reach port(s) {shown}{'...' if len(extra) > 3 else ''} "
                                                 "which are not an ALB listener port"))

    for r in graph.of_type(SG_INGRESS):
        check(r, str(r.inputs.get("securityGroupId")), r.inputs,
              [c for c in (r.inputs.get("cidrIpv4"), r.inputs.get("cidrIpv6")) if c])
    for r in graph.of_type(SG_RULE):
        if r.inputs.get("type") == "ingress":
            check(r, str(r.inputs.get("securityGroupId")), r.inputs,
                  [*(r.inputs.get("cidrBlocks") or []), *(r.inputs.get("ipv6CidrBlocks") or [])])
    for r in graph.of_type(SG):
        for rule in r.inputs.get("ingress") or []:
            check(r, r.id, rule, [*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or [])])
    return out


def policy_documents(graph: Graph) -> list[tuple[Resource, str, dict[str, Any]]]:
    """Every IAM policy document the graph declares: (resource, field, parsed document)."""
    docs = []
    fields = {
        "aws:iam/role:Role": ("assumeRolePolicy",),
        "aws:iam/rolePolicy:RolePolicy": ("policy",),
        "aws:iam/policy:Policy": ("policy",),
        "aws:iam/userPolicy:UserPolicy": ("policy",),
        "aws:iam/groupPolicy:GroupPolicy": ("policy",),
    }
    for r in graph:
        for f in fields.get(r.type, ()):
            raw = r.inputs.get(f)
            if raw:
                docs.append((r, f, json.loads(raw) if isinstance(raw, str) else raw))
        if r.type == "aws:iam/role:Role":
            for inline in r.inputs.get("inlinePolicies") or []:
                if inline.get("policy"):
                    docs.append((r, "inlinePolicies", json.loads(inline["policy"])))
    return docs


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def no_wildcard_actions(graph: Graph) -> list[Violation]:
    out = []
    for r, f, doc in policy_documents(graph):
        for st in _as_list(doc.get("Statement", [])):
            if st.get("Effect", "Allow") != "Allow":
                continue
            bad = [a for a in _as_list(st.get("Action", [])) if a in ("*", "*:*")]
            if bad or "NotAction" in st:
                out.append(_v("no_wildcard_actions", r, f"{f} statement {st.get('Sid', '?')} allows every action"))
    return out


@cache
def _taggable(type_: str) -> bool:
    """Whether the provider's class for this type takes `tags` (introspected, not hand-listed)."""
    try:
        pkg, mod_path, cls_name = type_.split(":")
        mod = mod_path.split("/")[0]
        module = importlib.import_module(f"pulumi_{pkg}" if mod == "index" else f"pulumi_{pkg}.{mod}")
        cls = getattr(module, cls_name)
    except (ValueError, ImportError, AttributeError):
        return False
    return "tags" in inspect.signature(cls._internal_init).parameters


def _tags_of(r: Resource) -> dict[str, str]:
    tags = r.inputs.get("tags")
    if r.type == ASG and isinstance(tags, list):
        return {t["key"]: t["value"] for t in tags if t.get("propagateAtLaunch")}
    return dict(tags) if isinstance(tags, dict) else {}


def tagged(graph: Graph) -> list[Violation]:
    out = []
    for r in graph:
        if not r.custom or r.read or not _taggable(r.type):
            continue
        tags = _tags_of(r)
        missing = [k for k in REQUIRED_TAGS if not tags.get(k)]
        if missing:
            out.append(_v("tagged", r, f"missing tag(s) {', '.join(missing)}"))
    return out


def asg_desired_ignored(graph: Graph) -> list[Violation]:
    return [
        _v("asg_desired_ignored", r, "desiredCapacity is not in ignore_changes; a deploy would reset live scaling")
        for r in graph.of_type(ASG) if "desiredCapacity" not in r.options.get("ignore_changes", [])
    ]


def snapshots_retained(graph: Graph) -> list[Violation]:
    """A snapshot the stack manages must survive its removal from the program (rollback needs it)."""
    return [
        _v("snapshots_retained", r, "managed weights snapshot without retain_on_delete or protect")
        for r in graph if r.type in ("aws:ebs/snapshot:Snapshot", "aws:ebs/snapshotCopy:SnapshotCopy")
        and not r.read and not (r.options.get("retain_on_delete") or r.options.get("protect"))
    ]


RULES: dict[str, Callable[[Graph], list[Violation]]] = {
    "imdsv2_required": imdsv2_required,
    "volumes_encrypted": volumes_encrypted,
    "no_open_ingress": no_open_ingress,
    "no_wildcard_actions": no_wildcard_actions,
    "tagged": tagged,
    "asg_desired_ignored": asg_desired_ignored,
    "snapshots_retained": snapshots_retained,
}


def check(graph: Graph) -> list[Violation]:
    return [v for rule in RULES.values() for v in rule(graph)]
