"""One real vLLM server (the local model on the CPU) per test session, shared by the e2e tests.

A vLLM start costs 35-150 s on a shared 2-core machine, so the tests that only need *a* replica
(answers, streaming, usage, model="default") share this one; only the pool tests (idle → zero →
wake, a killed replica) start their own.

    def test_x(vllm_server, gate_factory):
        gate = gate_factory(upstreams=[vllm_server.url], served_name=vllm_server.served_name)

The command is the launcher's (runtime/replica/launcher.py): what this serves is what a
replica runs. The weights come from the verified local cache (`make model` builds it).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

VARIANT = "smollm2-135m-cpu"


@dataclass
class VllmServer:
    url: str
    served_name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def local_model_dir() -> Path:
    """The bundled model's verified weight cache (built once; re-hydrated if it fails the manifest)."""
    from runtime.replica import weights
    from warmstart.spec import load_variant

    variant = load_variant(VARIANT)
    dest = weights.cache_dir_for(variant.model)
    return weights.ensure(variant.model, dest, model=variant.model, progress=lambda _m: None)


def start_vllm(variant_name: str, workdir: Path) -> VllmServer:
    from runtime.pool.local import kill_group
    from runtime.replica import readiness
    from runtime.replica.launcher import build_command
    from warmstart.spec import load_variant

    variant = load_variant(variant_name)
    port = free_port()
    cmd = build_command(variant, model_dir=local_model_dir(), host="127.0.0.1", port=port,
                        cache_dir=workdir / "vllm-cache")
    log_path = workdir / f"vllm-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(list(cmd.argv), env={**os.environ, **cmd.env}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        readiness.wait_ready(url, variant.served_name, timeout=600, alive=lambda: proc.poll() is None)
    except BaseException:
        kill_group(proc.pid, grace_s=5)
        raise RuntimeError(f"vLLM did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}") from None
    return VllmServer(url=url, served_name=variant.served_name, proc=proc, log_path=log_path)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    from runtime.pool.local import kill_group

    server = start_vllm(VARIANT, tmp_path_factory.mktemp("vllm"))
    yield server
    kill_group(server.proc.pid, grace_s=10)
    server.proc.wait(timeout=10)
