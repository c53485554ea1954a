"""The launcher's command line, checked against the real vLLM argument parser it feeds."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.replica.launcher import VLLM_MODULE, build_command
from runtime.replica.standby import server_flags
from warmstart.spec import Variant, load_variant

REPO = Path(__file__).resolve().parents[2]
ALL = ["smollm2-135m-cpu", "smollm2-135m-cpu-ngram", "llama31-8b-fp8-l4", "llama31-8b-eagle3-l40s"]


def _flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cpu_variant_command() -> None:
    cmd = build_command(load_variant("smollm2-135m-cpu"), model_dir="/w/model", host="127.0.0.1", port=8123,
                        cache_dir="/w/cache")
    argv = cmd.argv
    assert argv[1:3] == ("-m", VLLM_MODULE)
    assert _flag(argv, "--model") == "/w/model"
    assert _flag(argv, "--served-model-name") == "smollm2-135m"
    assert _flag(argv, "--host") == "127.0.0.1" and _flag(argv, "--port") == "8123"
    assert _flag(argv, "--dtype") == "bfloat16" and _flag(argv, "--max-model-len") == "2048"
    assert "--enforce-eager" in argv
    assert "--gpu-memory-utilization" not in argv and "--enable-sleep-mode" not in argv
    assert cmd.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert cmd.env["HF_HUB_OFFLINE"] == "1" and cmd.env["VLLM_CACHE_ROOT"] == "/w/cache"


def test_ngram_speculation_is_passed_as_vllm_json() -> None:
    cmd = build_command(load_variant("smollm2-135m-cpu-ngram"), model_dir="/m", host="127.0.0.1")
    spec = json.loads(_flag(cmd.argv, "--speculative-config"))
    assert spec == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def test_gpu_variant_gets_gpu_flags_and_sleep_mode() -> None:
    v = load_variant("llama31-8b-fp8-l4")
    cmd = build_command(v, model_dir="/m", host="10.0.3.7")
    assert "--gpu-memory-utilization" in cmd.argv
    assert ("--enable-sleep-mode" in cmd.argv) == v.engine.enable_sleep_mode
    assert "VLLM_CPU_KVCACHE_SPACE" not in cmd.env
    assert _flag(cmd.argv, "--tensor-parallel-size") == str(v.engine.tensor_parallel_size)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_refuses_every_interface(host: str) -> None:
    with pytest.raises(ValueError, match="private address"):
        build_command(load_variant("smollm2-135m-cpu"), model_dir="/m", host=host)


def test_shell_line_round_trips() -> None:
    cmd = build_command(load_variant("smollm2-135m-cpu-ngram"), model_dir="/m dir", host="127.0.0.1")
    words = shlex.split(cmd.shell())
    assert words[0] == "env"
    n_env = len(cmd.env)
    assert dict(w.split("=", 1) for w in words[1 : 1 + n_env]) == cmd.env
    assert tuple(words[1 + n_env :]) == cmd.argv


def test_standby_serves_the_same_flags() -> None:
    cmd = build_command(load_variant("smollm2-135m-cpu"), model_dir="/m", host="127.0.0.1")
    assert server_flags(list(cmd.argv)) == list(cmd.argv[3:])


@pytest.mark.slow
def test_real_vllm_parser_accepts_every_variant() -> None:
    """vLLM's own CLI parser (the installed version) parses each variant's argv: no unknown flag,
    no bad value, and the values land where we meant them."""
    argvs = {}
    for name in ALL:
        v: Variant = load_variant(name)
        argvs[name] = list(server_flags(list(build_command(v, model_dir="/m", host="127.0.0.1").argv)))
    script = (
        "import json, sys\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "out = {}\n"
        "for name, flags in json.loads(sys.stdin.read()).items():\n"
        "    a = make_arg_parser(FlexibleArgumentParser()).parse_args(flags)\n"
        "    sc = a.speculative_config\n"
        "    out[name] = {'model': a.model, 'host': a.host, 'served': a.served_model_name,\n"
        "                 'spec': sc if isinstance(sc, dict) or sc is None else dict(sc),\n"
        "                 'eager': a.enforce_eager, 'max_len': a.max_model_len}\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(argvs), capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    parsed = json.loads(res.stdout.strip().splitlines()[-1])
    assert parsed["smollm2-135m-cpu"]["served"] == ["smollm2-135m"]
    assert parsed["smollm2-135m-cpu"]["eager"] is True
    assert parsed["smollm2-135m-cpu-ngram"]["spec"]["method"] == "ngram"
    eagle = load_variant("llama31-8b-eagle3-l40s").engine.speculative_config
    assert eagle is not None
    assert parsed["llama31-8b-eagle3-l40s"]["spec"]["method"] == eagle.method
    assert all(p["host"] == "127.0.0.1" and p["model"] == "/m" for p in parsed.values())
