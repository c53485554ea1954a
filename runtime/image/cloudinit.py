"""cloud-init user data for the two kinds of machine: GPU replicas and gate instances.

Pure rendering (no Pulumi): the components call these functions, and the tests parse what they
return. The replica runs EXACTLY `runtime.replica.launcher.build_command(...).argv` inside the
runtime image; the private address it binds is only known at boot, so the argv is rendered with
a placeholder token that the boot script replaces from IMDSv2 (see templates/replica-boot.sh).
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runtime.replica.launcher import DEFAULT_PORT, EngineCommand, build_command
from warmstart.spec import Variant

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
SCRIPTS = HERE / "scripts"

# Tokens substituted by the boot script at every boot.
HOST_TOKEN = "@PRIVATE_IPV4@"
INSTANCE_TOKEN = "@INSTANCE_ID@"

BIN_DIR = "/opt/warmstart/bin"
ETC_DIR = "/etc/warmstart"
RUN_DIR = "/run/warmstart"
WEIGHTS_MOUNT = "/opt/warmstart/weights"
MODEL_DIR = f"{WEIGHTS_MOUNT}/model"
CACHE_DIR = f"{WEIGHTS_MOUNT}/cache"
# The runtime image's USER (runtime/image/Dockerfile): vLLM writes its compile cache to CACHE_DIR
# as this uid, so the boot script (and `warmstart weights build`) hand cache/ to it; model/ stays
# root's, read-only to the container.
RUNTIME_UID = 10001
# `warmstart weights build` labels the weights filesystem so; mounting by label survives the
# device renaming of Nitro instances (/dev/sdf becomes /dev/nvme1n1).
WEIGHTS_LABEL = "ws-weights"
WEIGHTS_DEVICE = "/dev/sdf"
ENGINE_TEMPLATE = f"{ETC_DIR}/engine.sh.tpl"
BOOT_ENV = f"{ETC_DIR}/boot.env"

GATE_PORT = 8080
# A directory of its own, bind-mounted read-only: the refresh replaces gate.json by rename (atomic),
# and a bind mount of the file itself would keep showing the container the old inode.
GATE_CONFIG_DIR = f"{ETC_DIR}/gate"
GATE_CONFIG = f"{GATE_CONFIG_DIR}/gate.json"
# The gate image's USER, as the same uid/gid pair the container is started with (docker run
# --user): the config (it holds the cache's AUTH token) is root-owned and readable by this group only.
GATE_UID = RUNTIME_UID
# The gate process inside the gate image; gunicorn + gevent are configured by the gate itself.
GATE_COMMAND: tuple[str, ...] = (
    "warmstart", "gate", "--config", GATE_CONFIG, "--host", "0.0.0.0", "--port", str(GATE_PORT),
)

REPLICA_CONTAINER = "warmstart-replica"
GATE_CONTAINER = "warmstart-gate"


def script_name(path: Path) -> str:
    """runtime/image/scripts/warm_pool_hook.sh ships as /opt/warmstart/bin/warm-pool-hook.sh."""
    return path.name.replace("_", "-")


def shipped_scripts(root: Path | None = None) -> dict[str, str]:
    """Every script under runtime/image/scripts at render time: bin name -> content."""
    root = root or SCRIPTS
    return {script_name(p): p.read_text() for p in sorted(root.glob("*.sh"))}


def engine_command(variant: Variant, *, host: str = HOST_TOKEN, port: int = DEFAULT_PORT) -> EngineCommand:
    """The launcher's command for this variant, laid out on the weights volume."""
    return build_command(
        variant, model_dir=MODEL_DIR, host=host, port=port, cache_dir=CACHE_DIR, python="python3"
    )


def _awslogs(region: str, group: str, stream: str) -> list[str]:
    return [
        "--log-driver", "awslogs",
        "--log-opt", f"awslogs-region={region}",
        "--log-opt", f"awslogs-group={group}",
        "--log-opt", f"awslogs-stream={stream}",
    ]


@dataclass(frozen=True)
class ReplicaUserData:
    variant: Variant
    image_uri: str
    region: str
    log_group: str
    asg_name: str
    launch_hook_name: str
    port: int = DEFAULT_PORT
    # How long a serving boot waits for vLLM's /health before it abandons the instance.
    ready_wait_s: int = 1800
    # The EC2_INSTANCE_TERMINATING hook drain.sh completes, and how long it lets running requests
    # finish first (the endpoint's request timeout; the hook's heartbeat is longer).
    terminate_hook_name: str = "warmstart-terminate"
    drain_timeout_s: int = 600
    scripts: dict[str, str] = field(default_factory=shipped_scripts)

    def docker_argv(self, host: str = HOST_TOKEN, instance_id: str = INSTANCE_TOKEN) -> list[str]:
        cmd = engine_command(self.variant, host=host, port=self.port)
        argv = [
            # --entrypoint "": the image's own entrypoint must not wrap the launcher's argv.
            "docker", "run", "--rm", "--name", REPLICA_CONTAINER, "--entrypoint", "",
            # The uid the boot script hands cache/ to, stated rather than inherited from the image.
            "--user", f"{RUNTIME_UID}:{RUNTIME_UID}",
            "--gpus", "all", "--network", "host", "--ipc", "host",
            "-v", f"{WEIGHTS_MOUNT}:{WEIGHTS_MOUNT}",
            *_awslogs(self.region, self.log_group, f"replica-{instance_id}"),
        ]
        for k, v in sorted(cmd.env.items()):
            argv += ["-e", f"{k}={v}"]
        return [*argv, self.image_uri, *cmd.argv]

    def engine_script(self) -> str:
        line = " ".join(shlex.quote(a) for a in self.docker_argv())
        return (
            "#!/bin/bash\n"
            "# Rendered by warmstart from the variant; the boot script fills in this boot's address.\n"
            f"exec {line}\n"
        )

    def boot_env(self) -> dict[str, str]:
        return {
            "IMAGE_URI": self.image_uri,
            "REGION": self.region,
            "ASG_NAME": self.asg_name,
            "LAUNCH_HOOK_NAME": self.launch_hook_name,
            "ENGINE_PORT": str(self.port),
            "ENGINE_TEMPLATE": ENGINE_TEMPLATE,
            "RUN_DIR": RUN_DIR,
            "BIN_DIR": BIN_DIR,
            "WEIGHTS_MOUNT": WEIGHTS_MOUNT,
            "RUNTIME_UID": str(RUNTIME_UID),
            "READY_WAIT_TRIES": str(max(self.ready_wait_s // 5, 1)),
            "TERMINATE_HOOK_NAME": self.terminate_hook_name,
            "DRAIN_TIMEOUT_S": str(self.drain_timeout_s),
        }


def _env_file(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def _file(path: str, content: str, mode: str = "0644") -> dict[str, Any]:
    return {"path": path, "content": content, "owner": "root:root", "permissions": mode}


def _unit(description: str, service: dict[str, str], *, after: Iterable[str] = (),
          requires: Iterable[str] = (), mounts: str | None = None, wanted_by: str | None = None) -> str:
    unit = [f"Description={description}"]
    if after:
        unit.append("After=" + " ".join(after))
        unit.append("Wants=network-online.target")
    if requires:
        unit.append("Requires=" + " ".join(requires))
    if mounts:
        unit.append(f"RequiresMountsFor={mounts}")
    text = "[Unit]\n" + "\n".join(unit) + "\n\n[Service]\n" + "".join(f"{k}={v}\n" for k, v in service.items())
    if wanted_by:
        text += f"\n[Install]\nWantedBy={wanted_by}\n"
    return text


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, units) as literal blocks: the user data stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _cloud_config(doc: dict[str, Any]) -> str:
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000)


def render_replica(ud: ReplicaUserData) -> str:
    """The replica's cloud-config: mounts the weights, installs the boot + engine units."""
    files = [
        _file(BOOT_ENV, _env_file(ud.boot_env()), "0600"),
        _file(ENGINE_TEMPLATE, ud.engine_script(), "0600"),
        _file(f"{BIN_DIR}/replica-boot.sh", (TEMPLATES / "replica-boot.sh").read_text(), "0755"),
        _file(
            "/etc/systemd/system/warmstart-boot.service",
            _unit(
                "warmstart replica boot (serve, or prepare a warm-pool instance)",
                {"Type": "oneshot", "RemainAfterExit": "yes", "TimeoutStartSec": str(ud.ready_wait_s + 900),
                 "ExecStart": f"{BIN_DIR}/replica-boot.sh"},
                after=("docker.service", "network-online.target"), requires=("docker.service",),
                mounts=WEIGHTS_MOUNT, wanted_by="multi-user.target",
            ),
        ),
        _file(
            "/etc/systemd/system/warmstart-replica.service",
            _unit(
                "warmstart replica: vLLM on this instance's private address",
                {"ExecStartPre": f"-/usr/bin/docker rm -f {REPLICA_CONTAINER}",
                 "ExecStart": f"/bin/bash {RUN_DIR}/engine.sh",
                 "ExecStop": f"/usr/bin/docker stop --time 30 {REPLICA_CONTAINER}",
                 "Restart": "always", "RestartSec": "5"},
                after=("docker.service",), requires=("docker.service",), mounts=WEIGHTS_MOUNT,
            ),
        ),
        _file(
            "/etc/systemd/system/warmstart-drain.service",
            # Started by the serving boot, never enabled: a warm-pool preparation boot has nothing
            # to drain (warm-pool-hook.sh completes that lifecycle action).
            _unit(
                "warmstart drain: finish running requests before the ASG removes this replica",
                {"ExecStart": f"{BIN_DIR}/drain.sh", "Restart": "on-failure", "RestartSec": "5"},
                after=("network-online.target",),
            ),
        ),
    ]
    for name, content in sorted(ud.scripts.items()):
        files.append(_file(f"{BIN_DIR}/{name}", content, "0755"))
    doc: dict[str, Any] = {
        "mounts": [[f"LABEL={WEIGHTS_LABEL}", WEIGHTS_MOUNT, "auto",
                    "defaults,nofail,x-systemd.device-timeout=120", "0", "2"]],
        "write_files": files,
        "runcmd": [
            ["mkdir", "-p", WEIGHTS_MOUNT],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "warmstart-boot.service"],
            # --no-block: the boot unit waits for vLLM to be ready; cloud-init must not.
            ["systemctl", "start", "--no-block", "warmstart-boot.service"],
        ],
    }
    return _cloud_config(doc)


@dataclass(frozen=True)
class GateUserData:
    image_uri: str
    region: str
    log_group: str
    config_parameter: str
    refresh_interval_s: int = 60
    # gunicorn settings from the edge's timeout rule (components/timeouts.py): WS_GATE_KEEPALIVE,
    # WS_GATE_GRACEFUL_TIMEOUT.
    gate_env: dict[str, str] = field(default_factory=dict)
    # `docker stop --time`: above gunicorn's graceful timeout, so running streams end on their own.
    stop_timeout_s: int = 60

    def docker_argv(self, instance_id: str = "%H") -> list[str]:
        argv = [
            "/usr/bin/docker", "run", "--rm", "--name", GATE_CONTAINER, "--entrypoint", "", "--network", "host",
            # Explicit uid AND gid: the image's USER gives the uid, but the group that may read the
            # config must not depend on the image's /etc/group.
            "--user", f"{GATE_UID}:{GATE_UID}",
            "-v", f"{GATE_CONFIG_DIR}:{GATE_CONFIG_DIR}:ro",
            *_awslogs(self.region, self.log_group, f"gate-{instance_id}"),
            # boto3 (key table, ASG, CloudWatch) takes credentials from IMDS but not the region.
            "-e", f"AWS_REGION={self.region}", "-e", f"AWS_DEFAULT_REGION={self.region}",
        ]
        for k, v in sorted(self.gate_env.items()):
            argv += ["-e", f"{k}={v}"]
        return [*argv, self.image_uri, *GATE_COMMAND]

    def boot_env(self) -> dict[str, str]:
        return {
            "IMAGE_URI": self.image_uri,
            "REGION": self.region,
            "GATE_CONFIG": GATE_CONFIG,
            "GATE_CONFIG_DIR": GATE_CONFIG_DIR,
            "GATE_GID": str(GATE_UID),
            "GATE_CONFIG_PARAMETER": self.config_parameter,
        }


def render_gate(ud: GateUserData) -> str:
    """The gate's cloud-config: docker, the config fetcher (boot + timer), the gate unit."""
    exec_start = " ".join(shlex.quote(a) for a in ud.docker_argv())
    files = [
        _file(BOOT_ENV, _env_file(ud.boot_env()), "0600"),
        _file(f"{BIN_DIR}/gate-boot.sh", (TEMPLATES / "gate-boot.sh").read_text(), "0755"),
        _file(
            "/etc/systemd/system/warmstart-gate.service",
            _unit(
                "warmstart gate (gunicorn + gevent) behind the ALB",
                {"ExecStartPre": f"-/usr/bin/docker rm -f {GATE_CONTAINER}", "ExecStart": exec_start,
                 # gunicorn reloads on HUP: new workers read the new config, old ones finish their
                 # requests (graceful timeout); the listening socket never closes.
                 "ExecReload": f"/usr/bin/docker kill --signal HUP {GATE_CONTAINER}",
                 "ExecStop": f"/usr/bin/docker stop --time {ud.stop_timeout_s} {GATE_CONTAINER}",
                 # systemd's default (90 s) would kill the stop itself long before the streams end.
                 "TimeoutStopSec": str(ud.stop_timeout_s + 30),
                 "Restart": "always", "RestartSec": "3"},
                after=("docker.service", "network-online.target"), requires=("docker.service",),
                # Enabled by gate-boot.sh: a reboot brings the gate back with the config on disk.
                wanted_by="multi-user.target",
            ),
        ),
        _file(
            "/etc/systemd/system/warmstart-gate-config.service",
            _unit("warmstart gate config refresh from SSM",
                  {"Type": "oneshot", "ExecStart": f"{BIN_DIR}/gate-boot.sh --refresh"},
                  after=("docker.service", "network-online.target")),
        ),
        _file(
            "/etc/systemd/system/warmstart-gate-config.timer",
            "[Unit]\nDescription=warmstart gate config refresh\n\n[Timer]\n"
            f"OnBootSec={ud.refresh_interval_s}\nOnUnitActiveSec={ud.refresh_interval_s}\n\n"
            "[Install]\nWantedBy=timers.target\n",
        ),
    ]
    doc: dict[str, Any] = {
        "packages": ["docker"],
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "docker.service"],
            [f"{BIN_DIR}/gate-boot.sh"],
            ["systemctl", "enable", "--now", "warmstart-gate-config.timer"],
        ],
    }
    return _cloud_config(doc)


# EC2 refuses user data over 16 KB (raw, before base64). The replica's cloud-config embeds its
# scripts and units (~11 KB raw, ~15 KB base64), so launch templates carry it gzip-compressed:
# cloud-init recognises gzip by its magic bytes and decompresses it before parsing.
USER_DATA_LIMIT = 16384
_GZIP_MAGIC = b"\x1f\x8b"


def encode(user_data: str) -> str:
    """base64(gzip(user data)), for LaunchTemplate.user_data. mtime=0 keeps it byte-stable across
    renders, so an unchanged program never shows a launch template diff (nor a new version)."""
    return base64.b64encode(gzip.compress(user_data.encode(), compresslevel=9, mtime=0)).decode()


def decode(encoded: str) -> str:
    """The user data document as cloud-init reads it, from what a launch template carries."""
    raw = base64.b64decode(encoded)
    return (gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw).decode()


def parse(user_data: str) -> dict[str, Any]:
    """Read back a rendered cloud-config (tests, validators)."""
    if not user_data.startswith("#cloud-config\n"):
        raise ValueError("not a #cloud-config document")
    doc = yaml.safe_load(user_data)
    assert isinstance(doc, dict)
    return doc


def written_file(user_data: str, path: str) -> str:
    for f in parse(user_data).get("write_files", []):
        if f["path"] == path:
            return str(f["content"])
    raise KeyError(path)


def shell_scripts(user_data: str) -> dict[str, str]:
    """Every file the cloud-config writes that is a shell script (by shebang)."""
    return {
        f["path"]: str(f["content"]) for f in parse(user_data).get("write_files", [])
        if re.match(r"^#!\s*/bin/(ba)?sh", str(f["content"]))
    }
