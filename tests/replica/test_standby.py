"""The Instant Start standby's head start, counted rather than timed.

What a wake would otherwise pay for, besides loading the model, is vLLM reading the tokenizer (a
renderer's, a processor lookup's for the chat template) and full garbage collections over the
imported heap. The standby does the first ahead under the flags the wake will carry and freezes
the heap. These tests run the standby's own steps in a fresh interpreter with real vLLM and count
tokenizer loads from disk: zero for a wake with the expected flags (another port), some for a wake
with another model (the caches are keyed by it: the test can fail). The e2e tests
(test_e2e_local.py) wake real standbys and talk to them through the gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.replica.launcher import build_command
from tests.support.vllm_server import local_model_dir
from warmstart.spec import load_variant

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import gc, json, sys
from runtime.replica import standby

expected, same, other = (json.loads(a) for a in sys.argv[1:4])
standby.preimport()
standby.keep_fork()
standby.prewarm(standby.server_flags(expected))
standby.freeze_heap()
frozen = gc.get_freeze_count()

from transformers.tokenization_utils_base import PreTrainedTokenizerBase
loads = []
original = PreTrainedTokenizerBase.from_pretrained.__func__

def counted(cls, *args, **kwargs):
    loads.append(str(args[0] if args else kwargs.get("pretrained_model_name_or_path")))
    return original(cls, *args, **kwargs)

PreTrainedTokenizerBase.from_pretrained = classmethod(counted)

def wake_renderer(argv):
    standby.warm_renderer(standby.parse_flags(standby.server_flags(argv)))

wake_renderer(same)
n_same = len(loads)
wake_renderer(other)
print(json.dumps({"frozen": frozen, "same": n_same, "other": len(loads) - n_same}))
"""


def test_a_wake_with_the_expected_flags_reads_no_tokenizer(tmp_path: Path) -> None:
    variant = load_variant("smollm2-135m-cpu")
    model = local_model_dir()
    moved = tmp_path / "same-weights-elsewhere"
    moved.mkdir()
    for f in model.iterdir():
        (moved / f.name).symlink_to(f)

    def argv(model_dir: Path, port: int) -> str:
        return json.dumps(list(build_command(variant, model_dir=model_dir, host="127.0.0.1", port=port).argv))

    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, argv(model, 0), argv(model, 8123), argv(moved, 8123)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, **build_command(variant, model_dir=model, host="127.0.0.1").env},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["same"] == 0, counts  # the renderer and the chat template came from the standby's caches
    assert counts["other"] >= 1, counts  # another model misses them (the count sees real loads)
    assert counts["frozen"] > 100_000, counts  # torch + vLLM + transformers: the collector skips them


def test_prewarm_argv_must_be_a_json_list(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "runtime.replica.standby", "--ready-file", str(tmp_path / "r"),
         "--prewarm-argv", "not json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert res.returncode == 2
    assert "--prewarm-argv: expected a JSON list of strings" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("extra", "says"), [((), "not-there"), (("--no-such-flag",), "SystemExit")])
def test_a_failed_prewarm_still_leaves_a_ready_standby(tmp_path: Path, extra: tuple[str, ...], says: str) -> None:
    """Prewarm is a head start: weights that are missing (being re-hydrated, say) or a flag this vLLM
    refuses must not kill the standby; the wake does the work itself and fails loudly if it must."""
    variant = load_variant("smollm2-135m-cpu")
    argv = [*build_command(variant, model_dir=tmp_path / "not-there", host="127.0.0.1").argv, *extra]
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.replica.standby", "--ready-file", str(ready),
         "--prewarm-argv", json.dumps(list(argv))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, **build_command(variant, model_dir=tmp_path, host="127.0.0.1").env},
    )
    out, _ = proc.communicate("", timeout=600)  # EOF on stdin once ready: the pool no longer needs it
    assert proc.returncode == 0, out[-3000:]
    assert ready.read_text().startswith("ready ")
    assert "prewarm skipped" in out and says in out
