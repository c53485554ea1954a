"""Run the real stack program offline and record the resource graph it declares.

The program runs under `pulumi.runtime.set_mocks` (Pulumi's documented unit-test path): every
pulumi-aws class is the real one and validates its arguments, but nothing talks to AWS and no
Pulumi CLI is needed. A MockMonitor subclass records, for each resource, its type, name, parent,
inputs and the options the engine would see (ignore_changes, protect, retain_on_delete,
depends_on, ...). Policies (stacks/policy.py) and tests run over that record.

Each run gets a fresh contextvars context and a fresh event loop, so runs never leak settings,
config or the root stack into each other (set_mocks is process-wide otherwise).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ACCOUNT = "123456789012"
PROJECT = "warmstart"


@dataclass
class Resource:
    type: str
    name: str
    urn: str
    parent: str | None
    inputs: dict[str, Any]
    options: dict[str, Any]
    id: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    custom: bool = True
    read: bool = False
    secret_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # Secrets print as Pulumi prints them; the mocked values are fake, but the habit matters.
        inputs = {k: "[secret]" if k in self.secret_inputs else v for k, v in self.inputs.items()}
        return {"type": self.type, "name": self.name, "parent": self.parent,
                "inputs": inputs, "options": self.options}


@dataclass
class Graph:
    stack: str
    resources: list[Resource]
    outputs: dict[str, Any]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name_suffix: str = "") -> Resource:
        found = [r for r in self.of_type(type_) if r.name.endswith(name_suffix)]
        if len(found) != 1:
            raise LookupError(f"expected one {type_} ending {name_suffix!r}, found {[r.name for r in found]}")
        return found[0]

    def by_name(self, name: str) -> Resource:
        for r in self.resources:
            if r.name == name:
                return r
        raise LookupError(name)

    def by_id(self, id_: str) -> Resource | None:
        for r in self.resources:
            if r.id == id_:
                return r
        return None

    def children(self, parent: str) -> list[Resource]:
        return [r for r in self.resources if r.parent == parent]

    def counts(self) -> Counter[str]:
        return Counter(r.type for r in self.resources)

    def ordered(self) -> list[Resource]:
        """Depth-first from the roots, siblings by (type, name): stable across runs, whatever
        order the engine finished registering in."""
        kids: dict[str | None, list[Resource]] = {}
        for r in self.resources:
            kids.setdefault(r.parent, []).append(r)
        out: list[Resource] = []

        def walk(parent: str | None) -> None:
            for r in sorted(kids.get(parent, []), key=lambda r: (r.type, r.name)):
                out.append(r)
                walk(r.name)

        walk(None)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"resources": [r.to_json() for r in self.ordered()]}

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources)


def _h(text: str, n: int = 17) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _arn(t: str, svc: str, region: str, name: str) -> str:
    """ARNs in each service's real format (policies and validators read them)."""
    formats = {
        "aws:cloudwatch/logGroup:LogGroup": f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{name}",
        "aws:ssm/parameter:Parameter": f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{name.lstrip('/')}",
        "aws:dynamodb/table:Table": f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{name}",
        "aws:iam/role:Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
        "aws:iam/instanceProfile:InstanceProfile": f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}",
        "aws:sns/topic:Topic": f"arn:aws:sns:{region}:{ACCOUNT}:{name}",
        "aws:autoscaling/group:Group": f"arn:aws:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:"
                                       f"{_h(name, 8)}:autoScalingGroupName/{name}",
        "aws:ec2/launchTemplate:LaunchTemplate": f"arn:aws:ec2:{region}:{ACCOUNT}:launch-template/lt-{_h(name, 17)}",
        "aws:kms/key:Key": f"arn:aws:kms:{region}:{ACCOUNT}:key/{_h(name, 8)}-{_h(name + 'k', 4)}",
    }
    return formats.get(t, f"arn:aws:{svc}:{region}:{ACCOUNT}:{t.rsplit(':', 1)[-1].lower()}/{name}")


class AwsMocks(pmocks.Mocks):
    """Plausible provider answers: ids, ARNs, DNS names, AZs, an AMI id, random bytes.

    `snapshots` maps snapshot id -> state the mocked AWS reports for it (the weight cache reads
    the variant's snapshot); unknown ids read as encrypted, which is what `weights build` makes.
    `offerings` maps an instance type -> the AZ letters that offer it (default: every AZ).
    `ebs` maps an instance type -> (EBS maximum throughput MB/s, maximum IOPS), DescribeInstanceTypes'
    figures; unknown types get MOCK_EBS_DEFAULT.
    """

    # EbsOptimizedInfo (MaximumThroughputInMBps, MaximumIops) as DescribeInstanceTypes reports them.
    EBS: dict[str, tuple[float, int]] = {
        "g6.xlarge": (1250.0, 40000), "g6e.xlarge": (625.0, 20000), "g5.xlarge": (437.5, 20000),
        "c7i.large": (1250.0, 40000),
    }
    MOCK_EBS_DEFAULT = (1250.0, 40000)

    def __init__(self, region: str = "us-east-1", snapshots: Mapping[str, dict[str, Any]] | None = None,
                 offerings: Mapping[str, str] | None = None,
                 ebs: Mapping[str, tuple[float, int]] | None = None):
        self.region = region
        self.snapshots = dict(snapshots or {})
        self.offerings = dict(offerings or {})
        self.ebs = {**self.EBS, **(ebs or {})}

    def call(self, args: pmocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        tok, a, r = args.token, args.args, self.region
        if tok == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": [f"{r}a", f"{r}b", f"{r}c"], "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
                    "id": r}, []
        if tok == "aws:ssm/getParameter:getParameter":
            return {"name": a.get("name"), "type": "String", "value": "ami-0" + _h(str(a.get("name")), 16),
                    "arn": f"arn:aws:ssm:{r}:{ACCOUNT}:parameter{a.get('name')}", "id": a.get("name")}, []
        if tok == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/preview", "userId": "PREVIEW",
                    "id": ACCOUNT}, []
        if tok == "aws:index/getRegion:getRegion":
            return {"name": r, "region": r, "id": r, "endpoint": f"ec2.{r}.amazonaws.com"}, []
        if tok == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}, []
        if tok == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            wanted = [v for f in a.get("filters") or [] if f.get("name") == "instance-type" for v in f["values"]]
            pairs = [(t, f"{r}{z}") for t in wanted for z in self.offerings.get(t, "abc")]
            return {"id": r, "instanceTypes": [t for t, _ in pairs], "locations": [z for _, z in pairs],
                    "locationTypes": ["availability-zone"] * len(pairs)}, []
        if tok == "aws:ec2/getInstanceType:getInstanceType":
            mbps, iops = self.ebs.get(str(a.get("instanceType")), self.MOCK_EBS_DEFAULT)
            return {"id": a.get("instanceType"), "instanceType": a.get("instanceType"),
                    "ebsPerformanceMaximumThroughput": mbps, "ebsPerformanceMaximumIops": iops}, []
        if tok == "aws:ec2/getSubnet:getSubnet":
            sid = str(a.get("id"))
            return {"id": sid, "availabilityZone": f"{r}{'abc'[int(_h(sid), 16) % 3]}", "vpcId": "vpc-adopted"}, []
        return {}, []

    def new_resource(self, args: pmocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        t, name, r = args.typ, args.name, self.region
        state: dict[str, Any] = dict(args.inputs)
        rid = args.resource_id or f"{name}-{_h(t + name, 8)}"
        svc = t.split(":")[1].split("/")[0] if ":" in t else "x"
        state.setdefault("arn", _arn(t, svc, r, str(args.inputs.get("name") or name)))
        state.setdefault("name", name)
        if t == "aws:lb/loadBalancer:LoadBalancer":
            state.update(dnsName=f"{name}-{_h(name, 8)}.{r}.elb.amazonaws.com", zoneId="Z35SXDOTRQ7X7K",
                         arnSuffix=f"app/{name}/{_h(name, 16)}")
        elif t == "aws:lb/targetGroup:TargetGroup":
            state.update(arnSuffix=f"targetgroup/{name}/{_h(name, 16)}")
        elif t == "aws:elasticache/replicationGroup:ReplicationGroup":
            state.update(primaryEndpointAddress=f"master.{name}.{_h(name, 6)}.use1.cache.amazonaws.com",
                         port=6379)
        elif t == "random:index/randomBytes:RandomBytes":
            raw = hashlib.sha256(f"{PROJECT}/{name}".encode()).digest()[: int(args.inputs.get("length", 32))]
            state.update(hex=raw.hex(), base64=__import__("base64").b64encode(raw).decode())
        elif t == "random:index/randomPassword:RandomPassword":
            state.update(result=_h("password/" + name, int(args.inputs.get("length", 32))))
        elif t == "aws:ebs/snapshot:Snapshot":
            known = self.snapshots.get(rid, {})
            state.update({"encrypted": True, "volumeSize": 30, "ownerId": ACCOUNT, **known})
        elif t == "aws:acm/certificate:Certificate":
            dn = args.inputs.get("domainName", "example.com")
            state.update(domainValidationOptions=[{
                "domainName": dn, "resourceRecordName": f"_{_h(dn, 12)}.{dn}.",
                "resourceRecordType": "CNAME", "resourceRecordValue": f"_{_h(dn, 20)}.acm-validations.aws.",
            }])
        elif t == "aws:ec2/vpc:Vpc":
            state.setdefault("defaultSecurityGroupId", f"sg-{_h(name)}")
        elif t == "aws:ec2/launchTemplate:LaunchTemplate":
            state.setdefault("latestVersion", 1)
        return rid, state


class RecordingMonitor(pmocks.MockMonitor):
    """MockMonitor that also keeps what the engine would be told about each resource."""

    def __init__(self, mocks: pmocks.Mocks):
        super().__init__(mocks)
        self.recorded: list[Resource] = []
        self._by_urn: dict[str, Resource] = {}

    def _name_of(self, urn: str) -> str | None:
        if not urn or urn.endswith("pulumi:pulumi:Stack::" + urn.rsplit("::", 1)[-1]):
            return None
        res = self._by_urn.get(urn)
        return res.name if res else urn.rsplit("::", 1)[-1]

    def RegisterResource(self, request: Any) -> Any:
        resp = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return resp
        from pulumi.runtime import rpc

        inputs = rpc.deserialize_properties(request.object)
        reg = self.resources.get(resp.urn)
        options: dict[str, Any] = {
            "ignore_changes": list(request.ignoreChanges),
            "protect": bool(request.protect) if request.HasField("protect") else False,
            "retain_on_delete": bool(request.retainOnDelete) if request.HasField("retainOnDelete") else False,
            "depends_on": sorted(filter(None, (self._name_of(u) for u in request.dependencies))),
            "delete_before_replace": bool(request.deleteBeforeReplace),
            "additional_secret_outputs": list(request.additionalSecretOutputs),
            "replace_on_changes": list(request.replaceOnChanges),
        }
        res = Resource(
            type=request.type, name=request.name, urn=resp.urn, parent=self._name_of(request.parent),
            inputs=_plain(inputs), options=options, id=reg.id if reg else "",
            outputs=_plain(reg.state) if reg else {}, custom=bool(request.custom),
            secret_inputs=_secret_keys(inputs),
        )
        self.recorded.append(res)
        self._by_urn[resp.urn] = res
        return resp

    def ReadResource(self, request: Any) -> Any:
        resp = super().ReadResource(request)
        reg = self.resources.get(resp.urn)
        res = Resource(
            type=request.type, name=request.name, urn=resp.urn, parent=self._name_of(request.parent),
            inputs={}, options={"ignore_changes": [], "protect": False, "retain_on_delete": False,
                                "depends_on": sorted(filter(None, (self._name_of(u) for u in request.dependencies))),
                                "read": True, "id": request.id},
            id=request.id,
            outputs=_plain(reg.state) if reg else {}, read=True,
        )
        self.recorded.append(res)
        self._by_urn[resp.urn] = res
        return resp


_SECRET_SIG = "4dabf18193072939515e22adb298388d"  # pulumi.runtime.rpc's wire marker of a secret


def _secret_keys(props: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in props.items() if isinstance(v, dict) and _SECRET_SIG in v)


def _plain(value: Any) -> Any:
    """JSON-safe copy of deserialized properties: secrets unwrapped, unknowns become None."""
    if isinstance(value, dict) and _SECRET_SIG in value:
        return _plain(value.get("value"))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _config_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """Stack-file values as the Pulumi engine passes them: structured values as JSON strings."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def _quiet_unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if "never retrieved" not in str(context.get("message", "")):
        loop.default_exception_handler(context)


def record(
    program: Callable[[], None],
    *,
    config: Mapping[str, Any] | None = None,
    stack: str = "test",
    mocks: pmocks.Mocks | None = None,
) -> Graph:
    """Run `program` under mocks with `config` and return what it declared."""

    def run() -> Graph:
        loop = asyncio.new_event_loop()
        # A failed program leaves sibling futures holding the same error; it is raised once below,
        # so their "exception was never retrieved" reports are noise.
        loop.set_exception_handler(_quiet_unretrieved)
        asyncio.set_event_loop(loop)
        try:
            region = str((config or {}).get("aws:region", "us-east-1"))
            monitor = RecordingMonitor(mocks or AwsMocks(region))
            pulumi.runtime.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False,
                                     monitor=monitor)
            set_all_config(_config_strings(config or {}), [])
            _sync_await(run_pulumi_func(program))
            root = pulumi.runtime.settings.get_root_resource()
            outputs: dict[str, Any] = {}
            for key, out in (getattr(root, "outputs", None) or {}).items():
                o = pulumi.Output.from_input(out)
                outputs[key] = {
                    "value": _plain(_sync_await(o.future())),
                    "secret": bool(_sync_await(o.is_secret())),
                }
            return Graph(stack=stack, resources=monitor.recorded, outputs=outputs)
        finally:
            pulumi.runtime.settings.reset_options()
            asyncio.set_event_loop(None)
            loop.close()

    return contextvars.Context().run(run)


def render_stack(stack: str, *, stack_dir: Path | None = None, mocks: pmocks.Mocks | None = None,
                 variants_root: Path | None = None) -> Graph:
    """The real stack program with stacks/Pulumi.<stack>.yaml's config, offline."""
    from stacks import config as stack_config
    from stacks import program

    values = stack_config.read_stack_file(stack, stack_dir)
    # Fail with the config's one-line message before Pulumi is involved at all.
    cfg = stack_config.parse_stack_config(
        values, source=str(stack_config.stack_file(stack, stack_dir)), variants_root=variants_root
    )
    # The real entry point: the program reads its config through pulumi.Config, as under `pulumi up`.
    return record(program.main, config=values, stack=stack, mocks=mocks or AwsMocks(cfg.region))


def tree(graph: Graph) -> str:
    """The resource tree (type, name) indented under parents, then a count by type."""
    depth: dict[str, int] = {}
    lines: list[str] = []
    for r in graph.ordered():
        d = depth[r.name] = depth.get(r.parent, -1) + 1 if r.parent else 0
        lines.append(f"{'  ' * d}{r.type}  {r.name}{'  (read)' if r.read else ''}")
    counts = graph.counts()
    lines.append("")
    lines.append(f"{len(graph.resources)} resources")
    lines += [f"  {n:4d}  {t}" for t, n in sorted(counts.items())]
    return "\n".join(lines)
