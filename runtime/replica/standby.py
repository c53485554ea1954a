"""Local Instant Start: a process that has already paid vLLM's import cost, waiting for a model.

A cold `python -m vllm.entrypoints.openai.api_server` on the CPU spends ~35 s before it answers,
almost all of it importing: the API server (~14 s), then an EngineCore process and a worker
process that vLLM *spawns* as fresh interpreters (~10 s of imports each). Weight load and engine
init are ~2 s for the local model.

A standby imports the API server, the engine core, the CPU worker and the model code once, then
blocks reading one JSON line on stdin: {"argv": [...vLLM server flags...], "env": {...}}. It then
serves exactly the command the launcher built (same flags, same environment), in this process.

What is left of a wake is made cheap three ways:
- Fork, not spawn. vLLM's CPU platform forces VLLM_WORKER_MULTIPROC_METHOD=spawn while it builds
  the config (vllm/platforms/cpu.py). The standby wraps that hook and puts `fork` back, so
  EngineCore and the worker are forked from this already warm interpreter instead of re-importing
  torch and vLLM. Fork is safe here because the standby has run no OpenMP/torch kernels yet
  (nothing to inherit in a broken state), no thread but the main one is running, and the CPU
  backend sets each worker's OpenMP thread binding after the fork.
- The model's non-weight work ahead (`prewarm`): given the argv the wake will carry, the
  tokenizer and the chat template are loaded into vLLM's own memoized caches, which the wake's
  identical calls then hit, and the files into the page cache.
- A frozen heap (`freeze_heap`): vLLM runs five full garbage collections across its three
  processes while it starts; with everything imported moved to the permanent generation they
  only walk what the wake itself allocated.

Protocol (the pool's side is runtime/pool/local.py):
    python -m runtime.replica.standby --ready-file PATH [--prewarm-argv JSON]
    → writes PATH ("ready <seconds spent importing and warming up>") once that is done
    ← one JSON line on stdin → serves; EOF on stdin → exits quietly (the pool no longer needs it)
"""

from __future__ import annotations

import argparse
import gc
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


# What the API server imports lazily while it builds its app and starts uvicorn (~0.2 s): its
# routers and their serving classes, uvicorn's protocol implementations. Recorded from a wake of
# the pinned vLLM (sys.modules before/after). Only a head start: one that a future vLLM moved is
# reported and skipped, the wake then imports whatever it needs itself.
WAKE_IMPORTS = (
    "anyio._backends._asyncio",
    "httptools",
    "model_hosting_container_standards",
    "prometheus_fastapi_instrumentator",
    "pydantic.v1",
    "starlette.staticfiles",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "vllm.entrypoints.anthropic.api_router",
    "vllm.entrypoints.cohere.api_router",
    "vllm.entrypoints.generate.api_router",
    "vllm.entrypoints.generate.generative_scoring.api_router",
    "vllm.entrypoints.generate.structured_decisions.api_router",
    "vllm.entrypoints.openai.chat_completion.api_router",
    "vllm.entrypoints.openai.completion.api_router",
    "vllm.entrypoints.openai.models.api_router",
    "vllm.entrypoints.openai.responses.api_router",
    "vllm.entrypoints.scale_out.factories",
    "vllm.entrypoints.serve.elastic_ep.api_router",
    "vllm.entrypoints.serve.instrumentator.metrics",
    "vllm.entrypoints.serve.instrumentator.offline_docs",
    "vllm.entrypoints.serve.lora.api_router",
    "vllm.entrypoints.serve.profile.api_router",
    "vllm.entrypoints.serve.sagemaker.api_router",
    "vllm.entrypoints.serve.tokenize.api_router",
    "vllm.v1.metrics.reader",
)


def preimport() -> None:
    for name in PREIMPORT:
        importlib.import_module(name)
    for name in WAKE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"warmstart standby: not pre-importing {name}: {e}", file=sys.stderr, flush=True)


def parse_flags(flags: list[str]) -> argparse.Namespace:
    """vLLM's own `serve` parser and checks, so the standby accepts exactly what the server does."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(description="warmstart standby replica"))
    args = parser.parse_args(flags)
    validate_parsed_serve_args(args)
    return args


def prewarm(flags: list[str]) -> None:
    """Do, ahead of the wake, the model-specific work of a start that is not loading the model.

    `flags` are the vLLM flags the wake is expected to carry (the pool knows its variant; only the
    port differs). vLLM memoizes what this builds, keyed by the model's path and tokenizer
    arguments, so the wake's own calls hit: the tokenizer (`cached_get_tokenizer`), the chat
    template and processor lookup (`cached_get_processor`), transformers' lazily imported
    config/tokenizer modules, the model-class inspection. A wake with
    different flags simply misses these caches and pays for them itself. The weight files are read
    into the page cache, as the AWS warm pool pre-reads its volume. No model is loaded.
    """
    args = parse_flags(flags)
    warm_renderer(args)
    model_dir = Path(args.model)
    if model_dir.is_dir():
        for f in sorted(model_dir.iterdir()):
            if f.is_file():
                with f.open("rb") as fh:
                    while fh.read(16 * 1024 * 1024):
                        pass


def warm_renderer(args: argparse.Namespace) -> None:
    """What the API server does with the tokenizer before it can serve a chat request: build the
    engine config and the renderer (tokenizer) and warm up its chat template, as vLLM does."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.renderers.registry import renderer_from_config
    from vllm.usage.usage_lib import UsageContext

    config = AsyncEngineArgs.from_cli_args(args).create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    renderer = renderer_from_config(config)
    try:
        renderer.warmup(_chat_params(args))
    finally:
        renderer.shutdown()  # its thread pools: nothing but the main thread may run when vLLM forks


def _chat_params(args: argparse.Namespace) -> Any:
    """The ChatParams the API server's renderer warm-up uses for these flags."""
    from vllm.entrypoints.launchers.cli_args import resolve_default_chat_template_kwargs
    from vllm.renderers.chat_utils import load_chat_template
    from vllm.renderers.params import ChatParams

    return ChatParams(
        chat_template=load_chat_template(args.chat_template),
        chat_template_content_format=args.chat_template_content_format,
        chat_template_kwargs=resolve_default_chat_template_kwargs(args),
    )


def freeze_heap() -> None:
    """Move everything imported so far into the collector's permanent generation.

    vLLM runs full collections at start-up in every process (after loading weights, twice; when
    EngineCore and the API server finish starting): over the heap of torch + vLLM + transformers
    each costs ~0.2-0.5 s on this CPU, about a third of the wake. Frozen objects are skipped by
    those collections, and the forked EngineCore and worker inherit the frozen generation (the
    pre-fork pattern gc.freeze exists for; it also stops the collector from touching, and so
    copying, the parent's pages in the children).
    """
    gc.collect()
    gc.freeze()


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
    from vllm.logger import configure_logging_from_args

    args = parse_flags(flags)
    configure_logging_from_args(args)
    uvloop.run(run_server(args))


def _json_argv(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise argparse.ArgumentTypeError(
            f"expected a JSON list of strings (the launcher's argv), e.g. '[\"python\", \"-m\", ...]', "
            f"got {text[:80]!r}"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ready-file", type=Path, required=True, help="written once imports are done")
    ap.add_argument("--prewarm-argv", type=_json_argv, metavar="JSON",
                    help="the launcher argv a wake is expected to carry (a JSON list; the port may differ): "
                         "its tokenizer, chat template and files are warmed up ahead")
    opts = ap.parse_args(argv)

    t0 = time.monotonic()
    keep_fork_env = os.environ.get("WARMSTART_STANDBY_SPAWN") != "1"  # escape hatch for comparisons
    preimport()
    if keep_fork_env:
        keep_fork()
    if opts.prewarm_argv is not None:
        try:
            prewarm(server_flags(opts.prewarm_argv))
        except (Exception, SystemExit) as e:  # a head start only (SystemExit: argparse refused a flag):
            # the wake does this work itself and reports real errors
            print(f"warmstart standby: prewarm skipped ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
    freeze_heap()
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
