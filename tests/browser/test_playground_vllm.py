"""The playground against real vLLM on the CPU (SmolLM2-135M-Instruct) behind the real gate: a new
user's first look. The screenshot saved here is the one the README and docs/local.md show (docs/playground.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.gate_server import GateFactory
from tests.support.vllm_server import VllmServer
from warmstart.monitoring.cli import metrics

pytestmark = pytest.mark.e2e


def test_a_real_model_answers_in_the_playground(
    chromium: Any, vllm_server: VllmServer, gate_factory: GateFactory, artifacts_dir: Path
) -> None:
    # The session's shared vLLM server (tests.support.vllm_server) behind the real gate.
    gate = gate_factory(upstreams=[vllm_server.url], served_name=vllm_server.served_name, hold_timeout_s=120)
    key = gate.mint(kind="playground", daily_cap=100)
    chromium.get("about:blank")
    chromium.get(f"{gate.url}/playground#key={key}")
    WebDriverWait(chromium, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pane-a option")) >= 2)
    assert chromium.find_element(By.CSS_SELECTOR, "#pane-a select").get_attribute("value") == vllm_server.served_name
    chromium.execute_script("""
      window.__lens = [];
      const pane = document.getElementById('pane-a');
      new MutationObserver(() => window.__lens.push(pane.querySelector('.output').textContent.length))
        .observe(pane.querySelector('.output'), {childList: true, characterData: true, subtree: true});
    """)
    # The page's defaults are the prompt FACTS.md says this model answers well: a system message,
    # "What is the capital of France?", temperature 0.
    assert chromium.find_element(By.ID, "user").get_attribute("value") == "What is the capital of France?"
    chromium.find_element(By.ID, "send").click()
    WebDriverWait(chromium, 300).until(
        lambda d: d.find_element(By.ID, "pane-a").get_attribute("data-state") in ("done", "error", "capped"))
    chromium.save_screenshot(str(artifacts_dir / "vllm.png"))

    pane = chromium.find_element(By.ID, "pane-a")
    assert pane.get_attribute("data-state") == "done", pane.find_element(By.CSS_SELECTOR, ".state").text
    answer = pane.find_element(By.CSS_SELECTOR, ".output").text
    assert "Paris" in answer
    lengths = chromium.execute_script("return window.__lens")
    assert len(set(lengths)) >= 3, lengths  # streamed in pieces, not delivered at the end
    completion = int(pane.find_element(By.CSS_SELECTOR, ".completion-tokens").text)
    assert completion >= 3 and int(pane.find_element(By.CSS_SELECTOR, ".prompt-tokens").text) > 0
    assert float(pane.find_element(By.CSS_SELECTOR, ".tps").text) > 0
    assert chromium.find_element(By.ID, "remaining").text == "99"

    res = CliRunner().invoke(metrics, ["--local", "--url", gate.url])
    assert res.exit_code == 0, res.output
    (artifacts_dir / "metrics-vllm.txt").write_text(res.output)
    d = json.loads(CliRunner().invoke(metrics, ["--local", "--url", gate.url, "--json"]).output)
    assert d["requests"] == 1 and d["tokens_out"] == completion and d["replicas_ready"] == 1
