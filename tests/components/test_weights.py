"""WeightCache: the variant's snapshot is read (never owned), checked, optionally FSR-enabled."""

from __future__ import annotations

import pytest

from stacks.preview import AwsMocks
from tests.support.pulumi_harness import render_values, stack_graph, stack_values
from warmstart.spec import load_variant

SNAP = "aws:ebs/snapshot:Snapshot"
FSR = "aws:ebs/fastSnapshotRestore:FastSnapshotRestore"


def test_snapshot_is_read_not_managed() -> None:
    g = stack_graph("prod")
    (snap,) = g.of_type(SNAP)
    v = load_variant("llama31-8b-eagle3-l40s")
    assert snap.read and snap.id == v.weights_snapshot_id
    assert snap.name == f"chat-weights-{v.name}"  # one per variant: a change never touches the old one
    assert snap.parent == "chat-weights"


def test_fast_snapshot_restore_per_az_where_enabled() -> None:
    g = stack_graph("prod")
    fsr = g.of_type(FSR)
    assert len(fsr) == 2
    assert {f.inputs["snapshotId"] for f in fsr} == {load_variant("llama31-8b-eagle3-l40s").weights_snapshot_id}
    azs = {s.inputs["availabilityZone"] for s in g.of_type("aws:ec2/subnet:Subnet") if s.inputs["tags"]["tier"] == "private"}
    assert {f.inputs["availabilityZone"] for f in fsr} == azs
    assert stack_graph("dev").of_type(FSR) == []


def test_unencrypted_snapshot_is_refused() -> None:
    snap = load_variant("llama31-8b-fp8-l4").weights_snapshot_id
    assert snap
    with pytest.raises(ValueError, match=rf"weights snapshot {snap} is not encrypted; rebuild it"):
        render_values(stack_values("dev"), mocks=AwsMocks(snapshots={snap: {"encrypted": False}}))


def test_snapshot_larger_than_the_volume_is_refused() -> None:
    snap = load_variant("llama31-8b-fp8-l4").weights_snapshot_id
    assert snap
    with pytest.raises(ValueError, match=r"weights_size_gib=40 is smaller than its snapshot .* \(80 GiB\); raise"):
        render_values(stack_values("dev"), mocks=AwsMocks(snapshots={snap: {"volumeSize": 80}}))
