"""Where a Variant becomes the vLLM server command line.

One code path for CPU and GPU: the differences are data (which flags apply, which environment).
The AWS launch template's cloud-init runs exactly `EngineCommand.argv` (components/ import this),
and the local pool runs the same argv as a subprocess, so what is tested here is what runs there.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.spec import Variant

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class EngineCommand:
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        """The command as one shell-quoted line (for cloud-init and logs)."""
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        cmd = " ".join(shlex.quote(a) for a in self.argv)
        return f"env {exports} {cmd}" if exports else cmd


def build_command(
    variant: Variant,
    *,
    model_dir: str | Path,
    host: str,
    port: int = DEFAULT_PORT,
    cache_dir: str | Path | None = None,
    python: str | None = None,
    cpu_kvcache_gib: int = 1,
) -> EngineCommand:
    """The vLLM OpenAI server for `variant`, serving weights from `model_dir`.

    host: the private address to bind (never 0.0.0.0 on AWS: only the gate reaches vLLM).
    cache_dir: on the weights volume, so torch.compile / CUDA graph caches survive restarts and
    ship inside the variant's snapshot.
    """
    if host in ("0.0.0.0", "::"):
        raise ValueError(
            f"host={host!r} binds every interface; pass the replica's private address "
            "(only the gate may reach vLLM)"
        )
    e = variant.engine
    argv: list[str] = [
        python or sys.executable, "-m", VLLM_MODULE,
        "--model", str(model_dir),
        "--served-model-name", variant.served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", e.dtype,
        "--tensor-parallel-size", str(e.tensor_parallel_size),
        "--max-num-seqs", str(e.max_num_seqs or max(variant.target_concurrency, 1)),
        "--generation-config", "vllm",  # the variant's engine settings, not the checkpoint's sampling defaults
    ]
    if e.max_model_len is not None:
        argv += ["--max-model-len", str(e.max_model_len)]
    if e.quantization is not None:
        argv += ["--quantization", e.quantization]
    if e.speculative_config is not None:
        argv += ["--speculative-config", json.dumps(e.speculative_config.to_vllm(), sort_keys=True)]
    if e.enforce_eager:
        argv.append("--enforce-eager")
    argv.append("--enable-prefix-caching" if e.enable_prefix_caching else "--no-enable-prefix-caching")

    env: dict[str, str] = {
        # Weights come from the cache directory only; a replica never reaches a model hub.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if cache_dir is not None:
        env["VLLM_CACHE_ROOT"] = str(cache_dir)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir) / "inductor")

    if variant.on_gpu:
        argv += ["--gpu-memory-utilization", f"{e.gpu_memory_utilization:.2f}"]
        if e.enable_sleep_mode:
            argv.append("--enable-sleep-mode")
    else:
        # vLLM's CPU backend sizes its KV cache from this (GiB); sleep mode does not exist there.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kvcache_gib)
    argv += list(e.extra_args)
    return EngineCommand(argv=tuple(argv), env=env)
