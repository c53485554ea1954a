"""Replica and gate user data: what the machine runs is exactly the launcher's argv.

The boot script is executed for real (bash) against an IMDSv2 server on a real socket that
rejects token-less reads; `docker`, `aws` and `systemctl` (absent here) are PATH shims that log
their argv, and a tiny HTTP server answers /health in vLLM's place.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from runtime.image import cloudinit
from runtime.replica.launcher import build_command
from tests.support.net import free_port
from warmstart.spec import load_variant

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-runtime:0.1.0"
IP = "127.0.0.1"
INSTANCE = "i-0123456789abcdef0"
TOKEN = "imds-token-abc"


class _Imds(http.server.BaseHTTPRequestHandler):
    state = "InService"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, TOKEN)
        else:
            self._send(400, "")

    def do_GET(self) -> None:
        if self.path == "/health":  # vLLM's readiness, on the engine port
            self._send(200, "")
            return
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._send(401, "")  # IMDSv2 only
            return
        values = {"instance-id": INSTANCE, "local-ipv4": IP, "autoscaling/target-lifecycle-state": self.state}
        key = self.path.removeprefix("/latest/meta-data/")
        self._send(200, values[key]) if key in values else self._send(404, "")


@dataclass
class Machine:
    root: Path
    port: int
    log: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [shlex.split(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def imds() -> Iterator[int]:
    port = free_port()
    server = http.server.ThreadingHTTPServer((IP, port), _Imds)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield port
    server.shutdown()
    server.server_close()


def _log_argv(cmd: str, log: Path) -> str:
    """A stand-in's first lines: log its argv as ONE write of a whole line. Commands in a pipeline
    (`aws ecr get-login-password | docker login ...`) run at once; O_APPEND writes under PIPE_BUF
    are atomic, two appends per call are not."""
    return f'#!/bin/bash\nprintf -v line "%q " {cmd} "$@"\nprintf \'%s\\n\' "$line" >> {log}\n'


def test_stand_ins_log_concurrent_calls_as_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    shim = tmp_path / "tool"
    shim.write_text(_log_argv("tool", log))
    shim.chmod(0o755)
    n = 64
    procs = [subprocess.Popen([str(shim), f"call-{i}", "x" * 200]) for i in range(n)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = [shlex.split(line) for line in log.read_text().splitlines()]
    assert sorted(lines) == sorted(["tool", f"call-{i}", "x" * 200] for i in range(n))


def _lay_out(tmp_path: Path, user_data: str,
             stand_ins: tuple[str, ...] = ("docker", "aws", "systemctl", "chown")) -> tuple[Path, dict[str, str], Path]:
    """The rendered cloud-config's files under tmp_path/machine, PATH shims for `stand_ins` that log
    their argv; returns the root, the environment to run its scripts in, and the log. The aws shim
    answers `ssm get-parameter` with the file $SSM_VALUE_FILE."""
    root = tmp_path / "machine"
    for f in cloudinit.parse(user_data)["write_files"]:
        p = root / f["path"].lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f["content"])
        p.chmod(int(f["permissions"], 8))
    # The boot env as written, with its absolute paths moved under the test's root.
    env_file = root / cloudinit.BOOT_ENV.lstrip("/")
    text = env_file.read_text()
    for d in (cloudinit.ETC_DIR, cloudinit.RUN_DIR, cloudinit.BIN_DIR, cloudinit.WEIGHTS_MOUNT):
        text = text.replace(f"={d}", f"={root}{d}")
    env_file.write_text(text)
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "calls.log"
    for cmd in stand_ins:
        shim = shims / cmd
        shim.write_text(_log_argv(cmd, log)
                        # an AWS API refusal, for calls whose argv contains $AWS_FAILS_ON
                        + ('if [ -n "${AWS_FAILS_ON:-}" ] && [[ " $* " == *" $AWS_FAILS_ON "* ]]; then exit 254; fi\n'
                           if cmd == "aws" else "")
                        + ('if [ "$1 $2" = "ssm get-parameter" ]; then cat "$SSM_VALUE_FILE"; exit 0; fi\n'
                           if cmd == "aws" else "")
                        + ("echo ecr-password\n" if cmd == "aws" else "")
                        # like docker login --password-stdin: read the password the pipe sends
                        + ('if [[ " $* " == *" --password-stdin "* ]]; then cat > /dev/null; fi\n' if cmd == "docker" else ""))
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "WARMSTART_BOOT_ENV": str(env_file),
           "WARMSTART_SYSTEMCTL": str(shims / "systemctl")}
    return root, env, log


def _boot(tmp_path: Path, imds_port: int, state: str, scripts: dict[str, str]) -> tuple[Machine, str]:
    """Lay the rendered cloud-config's files out under tmp_path and run the boot script."""
    _Imds.state = state
    variant = load_variant("llama31-8b-eagle3-l40s")
    ud = cloudinit.ReplicaUserData(variant=variant, image_uri=IMAGE, region="us-east-1", log_group="/w/r",
                                   asg_name="ws-prod-chat-replicas", launch_hook_name="warmstart-launch",
                                   port=imds_port, ready_wait_s=10, scripts=scripts)
    user_data = cloudinit.render_replica(ud)
    root, env, log = _lay_out(tmp_path, user_data)
    env = {**env, "WARMSTART_IMDS": f"http://{IP}:{imds_port}", "STATE_WAIT_TRIES": "3"}
    boot = root / cloudinit.BIN_DIR.lstrip("/") / "replica-boot.sh"
    proc = subprocess.run([str(boot)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return Machine(root=root, port=imds_port, log=log), user_data


def test_serving_boot_runs_exactly_the_launcher_argv(tmp_path: Path, imds: int) -> None:
    machine, _ = _boot(tmp_path, imds, "InService", scripts={})
    engine = (machine.root / cloudinit.RUN_DIR.lstrip("/") / "engine.sh").read_text()
    assert "@PRIVATE_IPV4@" not in engine and "@INSTANCE_ID@" not in engine
    (line,) = [ln for ln in engine.splitlines() if ln.startswith("exec ")]
    argv = shlex.split(line)[1:]
    image_at = argv.index(IMAGE)
    docker, container_cmd = argv[:image_at], argv[image_at + 1:]
    expected = build_command(load_variant("llama31-8b-eagle3-l40s"), model_dir=cloudinit.MODEL_DIR, host=IP,
                             port=machine.port, cache_dir=cloudinit.CACHE_DIR, python="python3")
    assert tuple(container_cmd) == expected.argv
    env_flags = {docker[i + 1] for i, a in enumerate(docker) if a == "-e"}
    assert env_flags == {f"{k}={v}" for k, v in expected.env.items()}
    assert docker[:2] == ["docker", "run"]
    for flag in (["--gpus", "all"], ["--network", "host"], ["--entrypoint", ""],
                 ["--user", f"{cloudinit.RUNTIME_UID}:{cloudinit.RUNTIME_UID}"],
                 ["-v", f"{cloudinit.WEIGHTS_MOUNT}:{cloudinit.WEIGHTS_MOUNT}"],
                 ["--log-opt", f"awslogs-stream=replica-{INSTANCE}"]):
        assert any(docker[i:i + 2] == flag for i in range(len(docker))), flag
    calls = machine.calls()
    assert ["docker", "pull", "--quiet", IMAGE] in calls
    assert ["aws", "ecr", "get-login-password", "--region", "us-east-1"] in calls
    assert ["systemctl", "start", "warmstart-replica.service"] in calls
    # vLLM (the image's uid) can write its compile cache: cache/ is theirs before the engine starts
    cache = machine.root / cloudinit.CACHE_DIR.lstrip("/")
    assert cache.is_dir() and cache.stat().st_mode & 0o777 == 0o755
    uid = str(cloudinit.RUNTIME_UID)
    chown = ["chown", "-R", f"{uid}:{uid}", str(cache)]
    assert calls.index(chown) < calls.index(["systemctl", "start", "warmstart-replica.service"])
    assert [c for c in calls if c[0] == "chown"] == [chown]  # model/ stays root's
    # scale-in lets its streams finish; armed before anything can fail, so a failed boot leaves fast too
    assert calls.index(["systemctl", "start", "warmstart-drain.service"]) < calls.index(["docker", "pull", "--quiet", IMAGE])
    phases = [c[-1].removeprefix("Key=warmstart:phase,Value=") for c in calls if c[:3] == ["aws", "ec2", "create-tags"]]
    assert phases == ["loading-weights", "warming", "ready"]
    assert all(c[c.index("--resources") + 1] == INSTANCE for c in calls if c[:3] == ["aws", "ec2", "create-tags"])
    # each launch phase restarts the launch hook's heartbeat clock: after the pull, after starting vLLM
    beats = [i for i, c in enumerate(calls) if c[:3] == ["aws", "autoscaling", "record-lifecycle-action-heartbeat"]]
    assert len(beats) == 2
    assert all(calls[i][calls[i].index("--lifecycle-hook-name") + 1] == "warmstart-launch" for i in beats)
    assert beats[0] > calls.index(["docker", "pull", "--quiet", IMAGE])
    assert beats[1] > calls.index(["systemctl", "start", "warmstart-replica.service"])
    complete = [c for c in calls if c[:3] == ["aws", "autoscaling", "complete-lifecycle-action"]]
    assert len(complete) == 1
    assert calls.index(complete[0]) > beats[1]
    assert complete[0][complete[0].index("--lifecycle-action-result") + 1] == "CONTINUE"
    assert complete[0][complete[0].index("--instance-id") + 1] == INSTANCE


def test_the_boot_script_hands_cache_to_the_images_user() -> None:
    dockerfile = (Path(cloudinit.__file__).parent / "Dockerfile").read_text()
    (user,) = [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("USER ")]
    assert user == str(cloudinit.RUNTIME_UID)


def test_warm_pool_boot_runs_the_hook_instead_of_serving(tmp_path: Path, imds: int) -> None:
    hook = f'#!/bin/bash\necho hook "$@" >> {tmp_path}/hook.log\n'
    machine, user_data = _boot(tmp_path, imds, "Warmed:Stopped", scripts={"warm-pool-hook.sh": hook})
    assert (tmp_path / "hook.log").read_text() == "hook\n"
    assert not (machine.root / cloudinit.RUN_DIR.lstrip("/") / "engine.sh").exists()
    calls = machine.calls()
    assert ["docker", "pull", "--quiet", IMAGE] in calls  # the image is cached before the stop
    assert not any(c[1:2] == ["start"] for c in calls)  # neither the engine nor the drain watcher
    # the hook completes the launch action itself; the boot only restarts the hook's clock after the pull
    (beat,) = [c for c in calls if c[:2] == ["aws", "autoscaling"]]
    assert beat[2] == "record-lifecycle-action-heartbeat"
    assert calls.index(beat) > calls.index(["docker", "pull", "--quiet", IMAGE])


def test_shipped_scripts_are_embedded_under_bin_with_dashes(tmp_path: Path) -> None:
    (tmp_path / "warm_pool_hook.sh").write_text("#!/bin/bash\ntrue\n")
    (tmp_path / "pre_read_volume.sh").write_text("#!/bin/bash\ntrue\n")
    (tmp_path / "notes.txt").write_text("not a script")
    assert set(cloudinit.shipped_scripts(tmp_path)) == {"warm-pool-hook.sh", "pre-read-volume.sh"}
    ud = cloudinit.render_replica(cloudinit.ReplicaUserData(
        variant=load_variant("llama31-8b-fp8-l4"), image_uri=IMAGE, region="us-east-1", log_group="/g",
        asg_name="a", launch_hook_name="h", scripts=cloudinit.shipped_scripts(tmp_path)))
    files = {f["path"]: f for f in cloudinit.parse(ud)["write_files"]}
    for name in ("warm-pool-hook.sh", "pre-read-volume.sh"):
        assert files[f"/opt/warmstart/bin/{name}"]["permissions"] == "0755"
    # by default every script in runtime/image/scripts ships
    default = cloudinit.render_replica(cloudinit.ReplicaUserData(
        variant=load_variant("llama31-8b-fp8-l4"), image_uri=IMAGE, region="us-east-1", log_group="/g",
        asg_name="a", launch_hook_name="h"))
    for p in cloudinit.SCRIPTS.glob("*.sh"):
        assert cloudinit.written_file(default, f"/opt/warmstart/bin/{cloudinit.script_name(p)}") == p.read_text()


def test_gate_user_data() -> None:
    ud = cloudinit.render_gate(cloudinit.GateUserData(image_uri=IMAGE, region="us-east-1", log_group="/w/g",
                                                      config_parameter="/warmstart/prod/chat/gate-config"))
    doc = cloudinit.parse(ud)
    assert doc["packages"] == ["docker"]
    env = cloudinit.written_file(ud, cloudinit.BOOT_ENV)
    assert "GATE_CONFIG_PARAMETER=/warmstart/prod/chat/gate-config" in env.splitlines()
    unit = cloudinit.written_file(ud, "/etc/systemd/system/warmstart-gate.service")
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[argv.index(IMAGE) + 1:] == list(cloudinit.GATE_COMMAND)
    assert "AWS_REGION=us-east-1" in argv[:argv.index(IMAGE)]
    assert [f"{cloudinit.BIN_DIR}/gate-boot.sh"] in doc["runcmd"]


# --- drain: a leaving replica lets its requests finish -------------------------------------------


class _Leaving(http.server.BaseHTTPRequestHandler):
    """IMDSv2 whose target lifecycle state follows `states`, and vLLM's /metrics whose running +
    waiting requests follow `busy` (the last value of each repeats). `events` records the order."""

    states: list[str] = []
    busy: list[tuple[int, int]] = []
    events: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._send(200, TOKEN.encode()) if ok else self._send(400, b"")

    @staticmethod
    def _next(seq: list[Any]) -> Any:
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def do_GET(self) -> None:
        if self.path == "/metrics":
            running, waiting = self._next(self.busy)
            self.events.append(f"metrics:{running + waiting}")
            self._send(200, _vllm_metrics(running, waiting))
            return
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._send(401, b"")
            return
        key = self.path.removeprefix("/latest/meta-data/")
        if key == "autoscaling/target-lifecycle-state":
            state = self._next(self.states)
            self.events.append(f"state:{state}")
            self._send(200, state.encode())
        elif key in ("instance-id", "local-ipv4"):
            self._send(200, (INSTANCE if key == "instance-id" else IP).encode())
        else:
            self._send(404, b"")


def _vllm_metrics(running: int, waiting: int) -> bytes:
    """vLLM's gauges, as its Prometheus logger declares them (vllm/v1/metrics/loggers.py)."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    for name, value in (("vllm:num_requests_running", running), ("vllm:num_requests_waiting", waiting)):
        Gauge(name, "requests", labels, registry=reg).labels(model_name="default", engine="0").set(value)
    Counter("vllm:num_preemptions", "not a request count", labels, registry=reg).labels(
        model_name="default", engine="0").inc(7)
    return generate_latest(reg)


@pytest.fixture
def leaving() -> Iterator[int]:
    port = free_port()
    server = http.server.ThreadingHTTPServer((IP, port), _Leaving)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield port
    server.shutdown()
    server.server_close()


def _drain(tmp_path: Path, port: int, states: list[str], busy: list[tuple[int, int]],
           timeout_s: int = 600, aws_fails_on: str = "") -> tuple[list[list[str]], list[str]]:
    """Run the shipped drain.sh as the rendered user data installs it; returns (calls, events)."""
    _Leaving.states, _Leaving.busy, _Leaving.events = list(states), list(busy), []
    ud = cloudinit.render_replica(cloudinit.ReplicaUserData(
        variant=load_variant("llama31-8b-eagle3-l40s"), image_uri=IMAGE, region="us-east-1", log_group="/w/r",
        asg_name="ws-prod-chat-replicas", launch_hook_name="warmstart-launch", port=port,
        terminate_hook_name="warmstart-terminate", drain_timeout_s=timeout_s))
    unit = cloudinit.written_file(ud, "/etc/systemd/system/warmstart-drain.service")
    assert f"ExecStart={cloudinit.BIN_DIR}/drain.sh" in unit.splitlines()
    root, env, log = _lay_out(tmp_path, ud)
    env = {**env, "WARMSTART_IMDS": f"http://{IP}:{port}", "DRAIN_POLL_S": "0.05", "AWS_FAILS_ON": aws_fails_on}
    proc = subprocess.run([str(root / cloudinit.BIN_DIR.lstrip("/") / "drain.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    return calls, list(_Leaving.events)


@pytest.mark.parametrize("leaving_to", ["Terminated", "Warmed:Stopped"])
def test_drain_waits_for_running_requests_then_continues(tmp_path: Path, leaving: int, leaving_to: str) -> None:
    busy = [(2, 0), (1, 1), (1, 0), (0, 0), (0, 1), (0, 0), (0, 0)]
    calls, events = _drain(tmp_path, leaving, ["InService"] * 4 + [leaving_to], busy)
    # nothing happens while the replica serves
    first_metrics = next(i for i, e in enumerate(events) if e.startswith("metrics"))
    assert events[:first_metrics] == ["state:InService"] * 4 + [f"state:{leaving_to}"]
    # a zero seen once is not enough (a request routed just before the gate noticed may follow):
    # it drains until two polls in a row see nothing running or queued
    assert [e for e in events if e.startswith("metrics")] == [f"metrics:{r + w}" for r, w in busy]
    tag, stop, complete = calls
    assert tag[:3] == ["aws", "ec2", "create-tags"] and tag[tag.index("--resources") + 1] == INSTANCE
    assert tag[-1] == "Key=warmstart:phase,Value=draining"
    assert stop == ["systemctl", "stop", "warmstart-replica.service"]
    assert complete[:3] == ["aws", "autoscaling", "complete-lifecycle-action"]
    args = dict(zip(complete[3::2], complete[4::2], strict=True))
    # back to the warm pool, the instance waits in Warmed:Pending:Wait, which the LAUNCH hook pauses
    hook = "warmstart-launch" if leaving_to.startswith("Warmed:") else "warmstart-terminate"
    assert args == {"--region": "us-east-1", "--auto-scaling-group-name": "ws-prod-chat-replicas",
                    "--lifecycle-hook-name": hook, "--instance-id": INSTANCE,
                    "--lifecycle-action-result": "CONTINUE"}


def test_drain_back_to_the_warm_pool_falls_back_to_the_termination_hook(tmp_path: Path, leaving: int) -> None:
    """AWS (warm pool lifecycle): "When you add a launch lifecycle hook, Amazon EC2 Auto Scaling pauses
    an instance that transitions to the Warmed:Pending:Wait state". drain.sh completes that hook first;
    where AWS holds the instance on the termination hook instead (CompleteLifecycleAction answers
    "No active Lifecycle Action found" for the launch hook), it completes that one."""
    calls, _ = _drain(tmp_path, leaving, ["Warmed:Stopped"], [(0, 0)],
                      aws_fails_on="--lifecycle-hook-name warmstart-launch")
    completes = [c[c.index("--lifecycle-hook-name") + 1] for c in calls
                 if c[:3] == ["aws", "autoscaling", "complete-lifecycle-action"]]
    assert completes == ["warmstart-launch", "warmstart-terminate"]


def test_drain_is_bounded_by_the_request_timeout(tmp_path: Path, leaving: int) -> None:
    calls, events = _drain(tmp_path, leaving, ["Terminated"], [(1, 0)], timeout_s=1)
    assert set(e for e in events if e.startswith("metrics")) == {"metrics:1"}  # never idle...
    assert calls[-1][-2:] == ["--lifecycle-action-result", "CONTINUE"]  # ...and it lets go anyway


# --- boot drills: what the boot scripts leave behind, read as the image's uid --------------------
#
# The containers run as the image's uid (docker run --user UID:GID), not root. These drills run the
# rendered boot scripts for real (as root, with stand-ins only for docker, aws and systemctl), then
# act as that uid with setpriv: read the gate's config and start the gate; read model/ and write
# cache/. A root-only file breaks them exactly as it breaks a real instance.


@pytest.fixture
def drill_root() -> Iterator[Path]:
    """A directory every uid may traverse (pytest's tmp_path lives under a 0700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("the boot drills switch uid (setpriv), which needs root")
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="ws-drill-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _as_uid(uid: int, gid: int, argv: list[str]) -> list[str]:
    """argv run as uid:gid with no supplementary groups, as `docker run --user uid:gid` runs it.
    Where this machine's interpreter sits under a directory only root may enter (/root/.pyenv),
    a private mount namespace shows that one subtree at the same path (a harness detail; the
    files the drills check are untouched)."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    real = Path(os.path.realpath(sys.executable))
    blocked = next((p for p in reversed(real.parents) if p != Path("/") and not os.stat(p).st_mode & 0o001), None)
    if blocked is None:
        return drop
    keep = real.relative_to(blocked).parts[0]
    script = ('set -e; d=$(mktemp -d); mount --bind "$1/$2" "$d"; mount -t tmpfs -o mode=0755 tmpfs "$1"; '
              'mkdir -p "$1/$2"; mount --bind "$d" "$1/$2"; shift 2; exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", str(blocked), keep, *drop]


def _docker_user(argv: list[str]) -> tuple[int, int]:
    uid, gid = argv[argv.index("--user") + 1].split(":")
    return int(uid), int(gid)


def test_gate_boot_drill_the_gate_reads_its_config_as_the_images_uid(
        drill_root: Path, upstream: Any, tmp_path: Path) -> None:
    """The gate container runs as the image's USER (10001), not root: a config written root:root 0640
    cannot be loaded (GateConfig.load fails, systemd restarts it forever, the ELB health check never
    passes and the ASG replaces gates in a loop). The drill: the dev stack's rendered gate boot,
    then the gate started as the uid:gid of its `docker run --user`, answering over HTTP."""
    from tests.support.keys import mint_key
    from tests.support.pulumi_harness import stack_graph

    g = stack_graph("dev")
    user_data = cloudinit.decode(g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs["userData"])
    root, env, log = _lay_out(drill_root, user_data, stand_ins=("docker", "aws", "systemctl"))
    unit = cloudinit.written_file(user_data, "/etc/systemd/system/warmstart-gate.service")
    docker = shlex.split(next(ln for ln in unit.splitlines() if ln.startswith("ExecStart=")).removeprefix("ExecStart="))
    uid, gid = _docker_user(docker)
    assert (uid, gid) == (cloudinit.GATE_UID, cloudinit.GATE_UID)
    # what the gate may write: its key store (a stand-in for DynamoDB) and its metrics directory
    state = drill_root / "state"
    state.mkdir()
    keys = f"sqlite:{state / 'keys.db'}"
    from tests.support.gate_server import gate_config as test_gate_config

    cfg = test_gate_config([upstream.url], keys, endpoint="drill")
    key = mint_key(keys, "drill")
    os.chown(state, uid, gid)
    for f in state.iterdir():
        os.chown(f, uid, gid)
    ssm = tmp_path / "ssm-value.json"
    ssm.write_text(json.dumps(cfg))
    env["SSM_VALUE_FILE"] = str(ssm)

    boot = root / cloudinit.BIN_DIR.lstrip("/") / "gate-boot.sh"
    proc = subprocess.run([str(boot)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    config = root / cloudinit.GATE_CONFIG.lstrip("/")
    # the mount the container sees is the directory (a rename-replaced file stays visible through it)
    assert ["-v", f"{cloudinit.GATE_CONFIG_DIR}:{cloudinit.GATE_CONFIG_DIR}:ro"] in [docker[i:i + 2] for i in range(len(docker))]
    st_dir, st_file = os.stat(config.parent), os.stat(config)
    assert (st_dir.st_uid, st_dir.st_gid, st_dir.st_mode & 0o777) == (0, gid, 0o750)
    assert (st_file.st_uid, st_file.st_gid, st_file.st_mode & 0o777) == (0, gid, 0o640)  # holds the cache token
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    image = docker[docker.index("--user") :][-len(cloudinit.GATE_COMMAND) - 1]
    assert ["docker", "pull", "--quiet", image] in calls
    assert calls[-2:] == [["systemctl", "enable", "warmstart-gate.service"],
                          ["systemctl", "restart", "warmstart-gate.service"]]
    # another uid cannot read it (the AUTH token stays private) ...
    other = subprocess.run(_as_uid(uid + 1, gid + 1, ["cat", str(config)]), capture_output=True, text=True)
    assert other.returncode != 0 and "Permission denied" in other.stderr
    # ... the image's uid starts the gate from it, with the rendered command and environment
    port = free_port()
    cmd = list(cloudinit.GATE_COMMAND)
    cmd[0] = str(Path(sys.executable).parent / "warmstart")
    cmd[cmd.index("--config") + 1] = str(config)
    cmd[cmd.index("--host") + 1] = IP
    cmd[cmd.index("--port") + 1] = str(port)
    run_env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(state),
               "PROMETHEUS_MULTIPROC_DIR": str(state / "metrics"),
               **dict(docker[i + 1].split("=", 1) for i, a in enumerate(docker) if a == "-e")}
    gate = subprocess.Popen(_as_uid(uid, gid, cmd), env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        import openai

        models = None
        for _ in range(300):
            if gate.poll() is not None:
                break
            try:
                models = openai.OpenAI(base_url=f"http://{IP}:{port}/v1", api_key=key, max_retries=0,
                                       timeout=2).models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.2)
        assert gate.poll() is None, gate.stdout.read().decode() if gate.stdout else ""
        assert models is not None and cfg["served_name"] in [m.id for m in models.data]
        worker = int(subprocess.run(["pgrep", "-g", str(gate.pid), "-f", "gunicorn|runtime.gate"],
                                    capture_output=True, text=True).stdout.split()[-1])
        assert os.stat(f"/proc/{worker}").st_uid == uid  # served by the image's uid, not root
    finally:
        os.killpg(gate.pid, signal.SIGINT)  # gunicorn's quick shutdown (TERM would wait the graceful timeout)
        gate.wait(timeout=30)


def test_gate_config_refresh_reloads_in_place(drill_root: Path, tmp_path: Path) -> None:
    """A changed config reloads the gate (ExecReload: gunicorn's HUP, new workers read it, old ones
    finish their requests) instead of restarting it, so a config change never takes every gate down
    within one timer period; an unchanged config does nothing; the file keeps its owner and mode."""
    ud = cloudinit.render_gate(cloudinit.GateUserData(image_uri=IMAGE, region="us-east-1", log_group="/w/g",
                                                      config_parameter="/warmstart/dev/chat/gate-config"))
    root, env, log = _lay_out(drill_root, ud, stand_ins=("docker", "aws", "systemctl"))
    ssm = tmp_path / "v.json"
    ssm.write_text('{"endpoint": "a"}')
    env["SSM_VALUE_FILE"] = str(ssm)
    boot = str(root / cloudinit.BIN_DIR.lstrip("/") / "gate-boot.sh")
    assert subprocess.run([boot], env=env, capture_output=True, timeout=60).returncode == 0
    log.write_text("")
    assert subprocess.run([boot, "--refresh"], env=env, capture_output=True, timeout=60).returncode == 0
    assert [c for c in (shlex.split(x) for x in log.read_text().splitlines()) if c[0] != "aws"] == []
    ssm.write_text('{"endpoint": "b"}')
    assert subprocess.run([boot, "--refresh"], env=env, capture_output=True, timeout=60).returncode == 0
    calls = [c for c in (shlex.split(x) for x in log.read_text().splitlines()) if c[0] != "aws"]
    assert calls == [["systemctl", "reload-or-restart", "warmstart-gate.service"]]  # no pull, no restart
    config = root / cloudinit.GATE_CONFIG.lstrip("/")
    assert config.read_text() == '{"endpoint": "b"}'
    st = os.stat(config)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, cloudinit.GATE_UID, 0o640)
    assert [p.name for p in config.parent.iterdir()] == ["gate.json"]  # no temp file left behind
    unit = cloudinit.written_file(ud, "/etc/systemd/system/warmstart-gate.service")
    assert f"ExecReload=/usr/bin/docker kill --signal HUP {cloudinit.GATE_CONTAINER}" in unit.splitlines()
    # a reboot brings the gate back: the unit has an [Install] section and gate-boot.sh enables it
    assert "[Install]\nWantedBy=multi-user.target\n" in unit


def test_replica_boot_drill_vllm_reads_model_and_writes_cache_as_the_images_uid(
        drill_root: Path, imds: int) -> None:
    """vLLM runs as the runtime image's USER (docker run --user 10001:10001); the weights volume was
    filled by root (here under a strict umask: 0600 files, a 0700 directory). After the rendered
    boot, that uid reads every file of model/ and writes its compile cache under cache/; model/
    stays root's (the uid cannot write there)."""
    _Imds.state = "InService"
    ud = cloudinit.ReplicaUserData(variant=load_variant("llama31-8b-fp8-l4"), image_uri=IMAGE, region="us-east-1",
                                   log_group="/w/r", asg_name="ws-dev-chat-replicas", launch_hook_name="warmstart-launch",
                                   port=imds, ready_wait_s=10)
    user_data = cloudinit.render_replica(ud)
    root, env, _ = _lay_out(drill_root, user_data, stand_ins=("docker", "aws", "systemctl"))
    weights = root / cloudinit.WEIGHTS_MOUNT.lstrip("/")
    model = weights / "model"
    (model / "tokenizer").mkdir(parents=True)
    for f in (model / "config.json", model / "model.safetensors", model / "tokenizer" / "tokenizer.json"):
        f.write_text("x")
        f.chmod(0o600)
    (model / "tokenizer").chmod(0o700)
    (weights / "cache").mkdir()
    (weights / "cache" / "from-build").write_text("root's")
    uid, gid = _docker_user(ud.docker_argv())
    check = ["sh", "-c", f'find "{model}" -type f -exec cat {{}} + > /dev/null && mkdir -p "{weights}/cache/torch_compile_cache/a" '
                         f'&& touch "{weights}/cache/torch_compile_cache/a/graph" && ! touch "{model}/x" 2>/dev/null']
    before = subprocess.run(_as_uid(uid, gid, check), capture_output=True, text=True)
    assert before.returncode != 0  # the drill can fail: as built, the uid can do neither
    env = {**env, "WARMSTART_IMDS": f"http://{IP}:{imds}", "STATE_WAIT_TRIES": "3"}
    boot = root / cloudinit.BIN_DIR.lstrip("/") / "replica-boot.sh"
    proc = subprocess.run([str(boot)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    after = subprocess.run(_as_uid(uid, gid, check), capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert all(p.stat().st_uid == 0 for p in [model, *model.rglob("*")])  # model/ is still root's
    assert all(p.stat().st_uid == uid for p in [weights / "cache", *(weights / "cache").rglob("*")])


def test_a_reload_serves_the_new_config_without_restarting_the_gate(gate_factory: Any) -> None:
    """What ExecReload relies on: gunicorn's HUP "Reload the configuration, start the new worker
    processes with a new configuration and gracefully shutdown older workers". The gate's workers
    load GateConfig when they start, so a config replaced by rename (as gate-boot.sh does) is
    served after a HUP, by the same master on the same socket."""
    import openai

    gate = gate_factory()
    key = gate.mint()
    client = openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=0, timeout=5)
    assert "renamed-model" not in [m.id for m in client.models.list().data]
    cfg = json.loads(gate.config_path.read_text())
    cfg["served_name"] = "renamed-model"
    tmp = gate.config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.rename(gate.config_path)
    workers = set(gate.workers())
    os.kill(gate.proc.pid, signal.SIGHUP)
    served: list[str] = []
    for _ in range(200):
        try:
            served = [m.id for m in openai.OpenAI(base_url=gate.base_url, api_key=key, max_retries=0,
                                                  timeout=5).models.list().data]
        except openai.APIConnectionError:
            served = []
        if "renamed-model" in served:
            break
        time.sleep(0.1)
    assert "renamed-model" in served
    assert gate.proc.poll() is None  # the same master: the listening socket never closed
    assert set(gate.workers()) - workers  # a new worker, started with the new config (old ones drain)
