"""The warm-pool lifecycle hook script: shellcheck-clean, and run for real with bash and the AWS CLI.

The instance metadata service and the Auto Scaling API endpoint are one small local HTTP server:
IMDSv2 needs an EC2 host, and moto does not implement CompleteLifecycleAction. The AWS CLI signs
and sends the real request; the server records its parameters.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "runtime" / "image" / "scripts" / "warm_pool_hook.sh"
TOKEN = "tok-123"


class Ec2Host(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.actions: list[dict[str, str]] = []
        self.untokened = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Ec2Host

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, TOKEN)
        else:
            self._send(400, "bad token request")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self.server.untokened += 1
            self._send(401, "IMDSv2 token required")
            return
        values = {"/latest/meta-data/instance-id": "i-0123456789abcdef0",
                  "/latest/meta-data/local-ipv4": "127.0.0.1"}
        if self.path in values:
            self._send(200, values[self.path])
        else:
            self._send(404, "not found")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        params = dict(urllib.parse.parse_qsl(body))
        self.server.actions.append(params)
        xml = ('<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">'
               "<CompleteLifecycleActionResult/><ResponseMetadata><RequestId>r-1</RequestId>"
               "</ResponseMetadata></CompleteLifecycleActionResponse>")
        self._send(200, xml, "text/xml")


@pytest.fixture()
def host() -> Iterator[Ec2Host]:
    server = Ec2Host()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def run_hook(host: Ec2Host, tmp_path: Path, device: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed; the hook completes the lifecycle action with it")
    env_file = tmp_path / "boot.env"
    env_file.write_text(
        "REGION=us-east-1\nASG_NAME=ws-dev-chat-replicas\nLAUNCH_HOOK_NAME=warmstart-launch\n"
        f"ENGINE_PORT=8000\nWEIGHTS_MOUNT={tmp_path}/weights\nRUN_DIR={tmp_path}/run\n"
    )
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        "WARMSTART_BOOT_ENV": str(env_file), "WARMSTART_IMDS": host.url,
        "WEIGHTS_DEVICE": device, "WARM_ENGINE": "0", "PREREAD_JOBS": "4",
        "AWS_ENDPOINT_URL": host.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_preread_then_continue(host: Ec2Host, tmp_path: Path) -> None:
    volume = tmp_path / "weights.img"
    volume.write_bytes(os.urandom(9 * 1024 * 1024 + 123))  # not a multiple of the readers' chunk
    res = run_hook(host, tmp_path, str(volume))
    assert res.returncode == 0, res.stderr
    assert f"pre-read {9 * 1024 * 1024 + 123} bytes" in res.stderr
    assert "with 4 parallel dd readers" in res.stderr
    assert host.untokened == 0
    assert [{k: a[k] for k in ("Action", "AutoScalingGroupName", "LifecycleHookName", "InstanceId",
                               "LifecycleActionResult")} for a in host.actions] == [{
        "Action": "CompleteLifecycleAction", "AutoScalingGroupName": "ws-dev-chat-replicas",
        "LifecycleHookName": "warmstart-launch", "InstanceId": "i-0123456789abcdef0",
        "LifecycleActionResult": "CONTINUE",
    }]


def test_missing_weights_volume_abandons(host: Ec2Host, tmp_path: Path) -> None:
    res = run_hook(host, tmp_path, str(tmp_path / "no-such-device"))
    assert res.returncode == 1
    assert "weights volume not found" in res.stderr
    assert [a["LifecycleActionResult"] for a in host.actions] == ["ABANDON"]


SYSTEMCTL = """#!/bin/bash
# systemd stand-in for the test: start/stop the one unit the hook drives, as a background process.
set -eu
unit="$2"
[ "$unit" = "warmstart-replica.service" ]
case "$1" in
  start) setsid bash "$RUN_DIR/engine.sh" >"$RUN_DIR/engine.log" 2>&1 & echo $! >"$RUN_DIR/engine.pid" ;;
  stop) kill -- -"$(cat "$RUN_DIR/engine.pid")" 2>/dev/null || true; echo stopped >>"$RUN_DIR/units.log" ;;
esac
"""


def test_engine_warm_up_renders_the_address_waits_for_health_and_stops(host: Ec2Host, tmp_path: Path) -> None:
    import sys

    from tests.support.net import free_port

    port = free_port()
    run_dir = tmp_path / "run"
    template = tmp_path / "engine.sh.tpl"
    # The engine template as cloud-init ships it, with the deterministic upstream standing in for vLLM.
    template.write_text(f"#!/bin/bash\nexec {sys.executable} -m tests.support.upstream "
                        f"--host @PRIVATE_IPV4@ --port {port}\n")
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(SYSTEMCTL)
    systemctl.chmod(0o755)
    volume = tmp_path / "weights.img"
    volume.write_bytes(os.urandom(1024 * 1024))
    env_file = tmp_path / "boot.env"
    env_file.write_text(
        "REGION=us-east-1\nASG_NAME=ws-dev-chat-replicas\nLAUNCH_HOOK_NAME=warmstart-launch\n"
        f"ENGINE_PORT={port}\nRUN_DIR={run_dir}\nENGINE_TEMPLATE={template}\n"
    )
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed; the hook completes the lifecycle action with it")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "RUN_DIR": str(run_dir),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "WARMSTART_BOOT_ENV": str(env_file), "WARMSTART_IMDS": host.url, "WARMSTART_SYSTEMCTL": str(systemctl),
        "WEIGHTS_DEVICE": str(volume), "WARM_ENGINE": "1", "READY_WAIT_TRIES": "24",
        "AWS_ENDPOINT_URL": host.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    }
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    assert "engine answered /health; stopping it" in res.stderr
    assert "--host 127.0.0.1" in (run_dir / "engine.sh").read_text()  # this boot's address, from IMDS
    assert (run_dir / "units.log").read_text() == "stopped\n"
    # the engine warm-up is its own phase: a heartbeat (RecordLifecycleActionHeartbeat "resets the
    # heartbeat timeout") restarts the launch hook's clock before it, then the action completes
    assert [(a["Action"], a["LifecycleHookName"], a.get("LifecycleActionResult")) for a in host.actions] == [
        ("RecordLifecycleActionHeartbeat", "warmstart-launch", None),
        ("CompleteLifecycleAction", "warmstart-launch", "CONTINUE")]
