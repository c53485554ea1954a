"""build_snapshot against moto's server: volume, fill, snapshot, tags, Fast Snapshot Restore."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from runtime.image.cloudinit import RUNTIME_UID
from runtime.replica.weights import write_manifest
from warmstart.errors import OperationError
from warmstart.ops.snapshot import build_snapshot


def weight_cache(root: Path) -> Path:
    d = root / "cache"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "model.safetensors").write_bytes(os.urandom(256 * 1024))
    (d / "tokenizer.json").write_text("{}")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    write_manifest(d, model="s3://warmstart-weights/meta-llama/Llama-3.1-8B-Instruct-FP8")
    return d


def dir_mount(root: Path) -> Any:
    """The volume's filesystem as a directory: attaching a block device needs an EC2 builder."""
    seen: list[str] = []

    @contextlib.contextmanager
    def mount(ec2: Any, volume_id: str) -> Iterator[Path]:
        vol = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        assert vol["State"] == "available" and vol["Encrypted"] and vol["VolumeType"] == "gp3"
        seen.append(volume_id)
        fs = root / volume_id
        fs.mkdir()
        yield fs

    mount.seen = seen  # type: ignore[attr-defined]
    return mount


def test_snapshot_built_tagged_and_build_volume_removed(aws_env: str, tmp_path: Path, aws_calls: Any) -> None:
    fsr = aws_calls("ec2", "EnableFastSnapshotRestores", {"Successful": [], "Unsuccessful": []})
    cache = weight_cache(tmp_path)
    mount = dir_mount(tmp_path)
    lines: list[str] = []
    snap = build_snapshot("llama31-8b-fp8-l4", cache, region="us-east-1",
                          fast_snapshot_restore_azs=("us-east-1a", "us-east-1b"),
                          progress=lines.append, mount=mount, poll_s=0)

    ec2 = boto3.client("ec2", region_name="us-east-1")
    s = ec2.describe_snapshots(SnapshotIds=[snap])["Snapshots"][0]
    tags = {t["Key"]: t["Value"] for t in s["Tags"]}
    assert tags["warmstart:variant"] == "llama31-8b-fp8-l4"
    assert tags["warmstart:model"] == "s3://warmstart-weights/meta-llama/Llama-3.1-8B-Instruct-FP8"
    assert tags["warmstart:created"].endswith("Z") and len(tags["warmstart:created"]) == 20
    assert len(tags["warmstart:manifest-sha256"]) == 64
    assert s["State"] == "completed"

    (vol,) = mount.seen
    assert s["VolumeId"] == vol
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vol]}])["Volumes"] == []
    fs = tmp_path / vol
    assert (fs / "model" / "model.safetensors").read_bytes() == (cache / "model.safetensors").read_bytes()
    assert (fs / "cache").is_dir()
    # vLLM writes its compile cache there as the runtime image's user; the weights stay root's
    assert (fs / "cache").stat().st_uid == RUNTIME_UID
    assert (fs / "model").stat().st_uid == os.geteuid()
    assert json.loads((fs / "warmstart-volume.json").read_text())["variant"] == "llama31-8b-fp8-l4"

    assert fsr.of("EnableFastSnapshotRestores") == [
        {"AvailabilityZones": ["us-east-1a", "us-east-1b"], "SourceSnapshotIds": [snap]}]
    assert [line[:5] for line in lines if line.startswith("[")] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert lines[-1].startswith(f"done: {snap}")


def test_no_fast_snapshot_restore_unless_asked(aws_env: str, tmp_path: Path, aws_calls: Any) -> None:
    fsr = aws_calls("ec2", "EnableFastSnapshotRestores", {"Successful": [], "Unsuccessful": []})
    build_snapshot("llama31-8b-fp8-l4", weight_cache(tmp_path), progress=lambda _: None,
                   mount=dir_mount(tmp_path), poll_s=0)
    assert fsr.of("EnableFastSnapshotRestores") == []


def test_a_corrupted_cache_never_ships(aws_env: str, tmp_path: Path) -> None:
    cache = weight_cache(tmp_path)
    (cache / "model.safetensors").write_bytes(os.urandom(256 * 1024))  # same size, other bytes
    with pytest.raises(OperationError, match="sha256 differs"):
        build_snapshot("llama31-8b-fp8-l4", cache, progress=lambda _: None, mount=dir_mount(tmp_path))
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ours = [{"Name": "tag-key", "Values": ["warmstart:variant"]}]
    assert ec2.describe_snapshots(Filters=ours)["Snapshots"] == []
    assert [v for v in ec2.describe_volumes()["Volumes"] if v.get("Tags")] == []


def test_off_ec2_without_a_mount_says_where_to_run(aws_env: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import warmstart.ops.snapshot as snapshot

    monkeypatch.setattr(snapshot, "IMDS", "http://127.0.0.1:9")  # nothing listens: not an EC2 instance
    with pytest.raises(OperationError, match="needs a builder EC2 instance"):
        build_snapshot("llama31-8b-fp8-l4", weight_cache(tmp_path), progress=lambda _: None)
