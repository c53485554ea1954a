"""Build a variant's weights snapshot: the EBS snapshot every replica's weights volume restores from.

    build_snapshot("llama31-8b-fp8-l4", Path("~/.cache/warmstart/weights/llama31"))

1. verify the weight cache (manifest: every file's size and sha256) — a corrupted cache never ships
2. create an encrypted gp3 volume in the builder's Availability Zone, sized for the cache
3. fill it: xfs labelled `ws-weights` (the replicas mount by label), `model/` = the cache,
   `cache/` = vLLM's compile cache directory; the copy is verified against the manifest again
4. snapshot it, tagged warmstart:variant / warmstart:created / warmstart:model / warmstart:manifest-sha256
5. delete the build volume; optionally enable Fast Snapshot Restore in the given AZs

Filling needs a block device, so on AWS this runs on a *builder instance*: any EC2 instance in
the target region with an instance profile allowing ec2:CreateVolume/AttachVolume/DetachVolume/
DeleteVolume/CreateSnapshot/CreateTags/DescribeVolumes/DescribeSnapshots (+ EnableFastSnapshotRestores),
xfsprogs installed, run as root (mkfs and mount). The default `mount` attaches the new volume to
that instance (found through IMDSv2), formats and mounts it. Anywhere else, pass `mount=` (tests
mount a directory); without one, the function says where to run it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from runtime.image.cloudinit import RUNTIME_UID, WEIGHTS_LABEL
from runtime.replica.weights import MANIFEST, read_manifest, verify
from warmstart.errors import OperationError
from warmstart.ops.aws import client, describe
from warmstart.spec import Variant, load_variant

Progress = Callable[[str], None]
Mount = Callable[[Any, str], AbstractContextManager[Path]]
"""mount(ec2_client, volume_id) -> context manager yielding the mounted filesystem's root."""

GIB = 1024**3
IMDS = "http://169.254.169.254"


def request_fast_snapshot_restore(ec2: Any, *, snapshot_id: str, zones: Sequence[str]) -> dict[str, Any]:
    """EnableFastSnapshotRestores, kept in one named place (moto lacks it; tests intercept this call)."""
    return dict(ec2.enable_fast_snapshot_restores(AvailabilityZones=list(zones), SourceSnapshotIds=[snapshot_id]))


# ---------------------------------------------------------------------------------------------
# On a builder instance


def _imds(path: str, timeout: float = 2.0) -> str:
    token_req = urllib.request.Request(
        f"{IMDS}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(token_req, timeout=timeout) as r:
        token = r.read().decode()
    req = urllib.request.Request(f"{IMDS}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return str(r.read().decode())


def builder_identity() -> tuple[str, str] | None:
    """(instance id, availability zone) when running on EC2, else None."""
    try:
        return _imds("instance-id"), _imds("placement/availability-zone")
    except (OSError, urllib.error.URLError):
        return None


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise OperationError(f"{argv[0]} is not installed on this builder; install it (xfsprogs, util-linux)") from None
    except subprocess.CalledProcessError as e:
        raise OperationError(f"{' '.join(argv)} failed: {(e.stderr or '').strip()[:300]}") from None


def _device_for(volume_id: str, wait_s: float = 120.0) -> Path:
    # Nitro instances expose EBS as NVMe; the volume id (without '-') is the device serial.
    candidates = [
        Path(f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"),
        Path("/dev/xvdw"), Path("/dev/sdw"),
    ]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for c in candidates:
            if c.exists():
                return c.resolve()
        time.sleep(1)
    raise OperationError(f"volume {volume_id} is attached but no block device appeared; check the builder")


@contextlib.contextmanager
def ec2_mount(ec2: Any, volume_id: str) -> Iterator[Path]:
    """Attach the volume to this builder instance, make the filesystem, mount it; undo all after."""
    ident = builder_identity()
    if ident is None:
        raise OperationError(
            "filling a weights volume needs a builder EC2 instance in the target region (root, xfsprogs); "
            "run `warmstart weights build --variant V --snapshot` there (docs/operations.md)"
        )
    instance_id, _ = ident
    ec2.attach_volume(Device="/dev/sdw", InstanceId=instance_id, VolumeId=volume_id)
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[volume_id], WaiterConfig={"Delay": 3})
    device = _device_for(volume_id)
    _run(["mkfs.xfs", "-q", "-f", "-L", WEIGHTS_LABEL, str(device)])
    mnt = Path(tempfile.mkdtemp(prefix="ws-weights-"))
    _run(["mount", str(device), str(mnt)])
    try:
        yield mnt
    finally:
        _run(["sync"])
        _run(["umount", str(mnt)])
        ec2.detach_volume(VolumeId=volume_id)
        ec2.get_waiter("volume_available").wait(VolumeIds=[volume_id], WaiterConfig={"Delay": 3})


# ---------------------------------------------------------------------------------------------


def _fill(root: Path, cache_dir: Path, progress: Progress) -> None:
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    cache.mkdir(exist_ok=True)
    # vLLM writes its compile cache here as the runtime image's user; this build runs as root
    os.chown(cache, RUNTIME_UID, RUNTIME_UID)
    files = sorted(p for p in cache_dir.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    done = 0
    for p in files:
        shutil.copyfile(p, model / p.name)
        done += p.stat().st_size
        progress(f"  copied {p.name} ({p.stat().st_size / 1e6:.1f} MB) — {100 * done / max(total, 1):.0f}%")
    verdict = verify(model, deep=True)
    if not verdict.ok:
        raise OperationError(f"the copy on the volume does not match the manifest: {verdict}")


def _wait_snapshot(ec2: Any, snapshot_id: str, progress: Progress, poll_s: float,
                   sleep: Callable[[float], None]) -> None:
    last = None
    while True:
        snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        state, pct = snap["State"], snap.get("Progress", "")
        if pct != last:
            progress(f"  snapshot {snapshot_id}: {state} {pct}")
            last = pct
        if state == "completed":
            return
        if state == "error":
            raise OperationError(f"snapshot {snapshot_id} failed: {snap.get('StateMessage', 'error')}")
        sleep(poll_s)


def build_snapshot(
    variant: str | Variant,
    cache_dir: Path,
    *,
    region: str | None = None,
    fast_snapshot_restore_azs: Sequence[str] = (),
    progress: Progress = print,
    mount: Mount | None = None,
    availability_zone: str | None = None,
    poll_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Build, tag and return the weights snapshot id of `variant` from its verified weight cache."""
    v = load_variant(variant) if isinstance(variant, str) else variant
    cache_dir = Path(cache_dir).expanduser()
    progress(f"[1/5] verifying the weight cache {cache_dir}")
    verdict = verify(cache_dir, deep=True)
    if not verdict.ok:
        raise OperationError(f"weight cache {cache_dir} is not valid ({verdict}); rebuild it with `warmstart weights build`")
    manifest = read_manifest(cache_dir)
    manifest_sha = hashlib.sha256((cache_dir / MANIFEST).read_bytes()).hexdigest()
    total = sum(int(meta["size"]) for meta in manifest["files"].values())
    # Room for xfs metadata and the compile cache vLLM writes next to the weights.
    size_gib = max(v.weights_size_gib, math.ceil(total * 1.2 / GIB) + 2)

    ec2 = client("ec2", region)
    if mount is None:
        mount = ec2_mount
        ident = builder_identity()
        if ident is None:
            raise OperationError(
                "filling a weights volume needs a builder EC2 instance in the target region (root, xfsprogs); "
                "run `warmstart weights build --variant V --snapshot` there (docs/operations.md)"
            )
        availability_zone = availability_zone or ident[1]
    try:
        zone = availability_zone or ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        tags = [
            {"Key": "Name", "Value": f"warmstart-weights-{v.name}"},
            {"Key": "warmstart:variant", "Value": v.name},
            {"Key": "warmstart:model", "Value": v.model[:255]},
            {"Key": "warmstart:created", "Value": created},
            {"Key": "warmstart:manifest-sha256", "Value": manifest_sha},
        ]
        progress(f"[2/5] creating a {size_gib} GiB encrypted gp3 volume in {zone} ({total / 1e9:.2f} GB of weights)")
        vol = ec2.create_volume(
            AvailabilityZone=zone, Size=size_gib, VolumeType="gp3", Encrypted=True,
            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
        )["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 2})
        try:
            progress(f"[3/5] filling {vol}")
            with mount(ec2, vol) as root:
                _fill(root, cache_dir, progress)
                (root / "warmstart-volume.json").write_text(json.dumps(
                    {"variant": v.name, "model": v.model, "created": created, "manifest_sha256": manifest_sha},
                    indent=2, sort_keys=True) + "\n")
            progress(f"[4/5] snapshotting {vol}")
            snap = ec2.create_snapshot(
                VolumeId=vol, Description=f"warmstart weights for variant {v.name}",
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
            )["SnapshotId"]
            _wait_snapshot(ec2, snap, progress, poll_s, sleep)
        finally:
            with contextlib.suppress(BotoCoreError, ClientError):
                ec2.delete_volume(VolumeId=vol)
        if fast_snapshot_restore_azs:
            progress(f"[5/5] enabling Fast Snapshot Restore in {', '.join(fast_snapshot_restore_azs)}")
            request_fast_snapshot_restore(ec2, snapshot_id=snap, zones=fast_snapshot_restore_azs)
        else:
            progress("[5/5] Fast Snapshot Restore not requested (first reads of a new volume are lazy)")
    except (BotoCoreError, ClientError, WaiterError) as e:
        msg = describe(e) if isinstance(e, (BotoCoreError, ClientError)) else str(e)
        raise OperationError(f"building the weights snapshot of {v.name} failed: {msg}") from None
    progress(f"done: {snap} — set weights_snapshot_id: {snap} in variants/{v.name}.yaml")
    return str(snap)
