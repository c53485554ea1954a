"""Local Instant Start: a process that has already paid vLLM's import cost, waiting for a model.

A cold `python -m vllm.entrypoints.openai.api_server` on the CPU spends ~35 s before it answers,
almost all of it importing: the API server (~14 s), then an EngineCore process and a worker
process that vLLM *spawns* as fresh interpreters (~10 s of imports each). Weight load and engine
init are ~2 s for the local model.

A standby imports the API server, the engine core, the CPU worker and the model code once, then
blocks reading one JSON line on stdin: {"argv": [...vLLM server flags...], "env": {...}}. It then
serves exactly the command the launcher built (same flags, same environment), in this process.

The trick that makes the children cheap: vLLM's CPU platform forces
VLLM_WORKER_MULTIPROC_METHOD=spawn while it builds the config (vllm/platforms/cpu.py). The standby
wraps that hook and puts `fork` back, so EngineCore and the worker are forked from this already
warm interpreter instead of re-importing torch and vLLM. Fork is safe here because the standby
has run no OpenMP/torch kernels yet (nothing to inherit in a broken state) and the CPU backend
sets each worker's OpenMP thread binding after the fork.

Protocol (the pool's side is runtime/pool/local.py):
    python -m runtime.replica.standby --ready-file PATH [--prewarm MODEL_DIR]
    → writes PATH ("ready <seconds spent importing>") once imports are done
    ← one JSON line on stdin → serves; EOF on stdin → exits quietly (the pool no longer needs it)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from runtime.replica.launcher import VLLM_MODULE

# What a wake would otherwise import in the API server, the EngineCore and the worker.
PREIMPORT = (
    "torch",
    "transformers",
    "uvloop",
    "vllm",
    "vllm.engine.arg_utils",
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.utils.argparse_utils",
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "vllm.v1.engine.core_client",
    "vllm.v1.executor.multiproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.cpu_model_runner",
    "vllm.model_executor.models.llama",
    "vllm.platforms.cpu",
)


def preimport() -> None:
    for name in PREIMPORT:
        importlib.import_module(name)


def prewarm(model_dir: Path) -> None:
    """Touch what every start of this model reads besides the weights' tensors: transformers'
    lazily imported config and tokenizer modules for its architecture, and the files themselves
    into the page cache (as the AWS warm pool pre-reads its volume). No model is loaded."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(model_dir))
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            with f.open("rb") as fh:
                while fh.read(16 * 1024 * 1024):
                    pass


def keep_fork() -> None:
    """Let vLLM's children fork from this warm process instead of spawning fresh interpreters."""
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__  # type: ignore[attr-defined]

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        original(cls, vllm_config)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[assignment]
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"

    # vLLM inspects a model class in a fresh interpreter (~20 s of imports) so that the parent
    # never initializes CUDA; there is no CUDA on the CPU backend, and everything is imported.
    from vllm.model_executor.models import registry

    registry._run_in_subprocess = lambda fn: fn()


def server_flags(argv: list[str]) -> list[str]:
    """The vLLM flags of a launcher argv ([python, -m, module, flags...])."""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2] == VLLM_MODULE:
        return list(argv[3:])
    return list(argv)


def serve(flags: list[str]) -> None:
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(description="warmstart standby replica"))
    args = parser.parse_args(flags)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    uvloop.run(run_server(args))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ready-file", type=Path, required=True, help="written once imports are done")
    ap.add_argument("--prewarm", type=Path, help="model folder whose config/tokenizer/files to warm up")
    opts = ap.parse_args(argv)

    t0 = time.monotonic()
    keep_fork_env = os.environ.get("WARMSTART_STANDBY_SPAWN") != "1"  # escape hatch for comparisons
    preimport()
    if opts.prewarm is not None:
        prewarm(opts.prewarm)
    if keep_fork_env:
        keep_fork()
    opts.ready_file.write_text(f"ready {time.monotonic() - t0:.2f}\n")

    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the pool closed our stdin: not needed any more
    order = json.loads(line)
    os.environ.update({str(k): str(v) for k, v in order.get("env", {}).items()})
    print(f"warmstart standby: woken after {time.monotonic() - t0:.2f}s", file=sys.stderr, flush=True)
    serve(server_flags([str(a) for a in order["argv"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
