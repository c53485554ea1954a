"""WeightCache: the variant's weights snapshot, made fast to restore.

The snapshot is built by `warmstart weights build` and named in the variant's YAML. The stack
only READS it (Snapshot.get): Pulumi never owns it, so no update, variant change or destroy can
delete it, and a rollback always finds the previous variant's weights. Deploying checks that it
exists and is encrypted (volumes restored from it inherit its encryption; EC2 refuses an
`encrypted` flag on a volume created from a snapshot).

Fast Snapshot Restore (optional, per AZ) removes the lazy-load penalty of a fresh volume; it is
owned by the stack and follows the variant (a variant change disables it on the old snapshot,
since FSR is billed per snapshot-AZ-hour). The cheaper alternative, a volume initialization rate,
is set on the launch template (GpuNodeGroup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.base import Tags, child
from warmstart.spec import Variant


@dataclass
class WeightCacheArgs:
    variant: Variant
    availability_zones: pulumi.Input[Sequence[str]]
    az_count: int
    fast_snapshot_restore: bool
    tags: Tags


def check_snapshot(variant: Variant, snapshot_id: str, encrypted: Any, size_gib: Any) -> str:
    if not encrypted:
        raise ValueError(
            f"variant {variant.name}: weights snapshot {snapshot_id} is not encrypted; rebuild it with "
            "`warmstart weights build` (encrypted) or copy it with --encrypted and update the variant"
        )
    if size_gib and int(size_gib) > variant.weights_size_gib:
        raise ValueError(
            f"variant {variant.name}: weights_size_gib={variant.weights_size_gib} is smaller than its "
            f"snapshot {snapshot_id} ({size_gib} GiB); raise weights_size_gib"
        )
    return snapshot_id


class WeightCache(pulumi.ComponentResource):
    snapshot_id: pulumi.Output[str]

    def __init__(self, name: str, args: WeightCacheArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("warmstart:weights:WeightCache", name, None, opts)
        v = args.variant
        if v.weights_snapshot_id is None:
            raise ValueError(f"variant {v.name} has no weights_snapshot_id; run `warmstart weights build {v.name}`")
        snap = aws.ebs.Snapshot.get(f"{name}-{v.name}", v.weights_snapshot_id, opts=child(self))
        self.snapshot_id = pulumi.Output.all(snap.id, snap.encrypted, snap.volume_size).apply(
            lambda a: check_snapshot(v, str(a[0]), a[1], a[2])
        )
        if args.fast_snapshot_restore:
            for i in range(args.az_count):
                az = pulumi.Output.from_input(args.availability_zones).apply(lambda zs, i=i: zs[i])  # type: ignore[misc]
                aws.ebs.FastSnapshotRestore(
                    f"{name}-fsr-{i}", availability_zone=az, snapshot_id=self.snapshot_id, opts=child(self),
                )
        self.register_outputs({"snapshot_id": self.snapshot_id})
