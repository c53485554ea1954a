"""The playground in a real headless Chromium, served by the real gate (gunicorn) in front of the
deterministic upstream: streamed text arrives piece by piece, the counters fill in, two variants
run side by side, the daily cap shows its message, and the key never reaches the server's logs.

The page is observed from inside (a MutationObserver records every change of the output and of the
state), so the test sees each step of a stream without racing it. Screenshots go to
artifacts/playground/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.playground import UPSTREAM_TOKENS, PlaygroundGate

EXPECTED_TEXT = "".join(f"tok{i} " for i in range(UPSTREAM_TOKENS))

RECORDER = """
window.__ws = [];
for (const pane of document.querySelectorAll('.pane')) {
  const rec = () => window.__ws.push({pane: pane.id, state: pane.dataset.state,
                                      len: pane.querySelector('.output').textContent.length});
  new MutationObserver(rec).observe(pane, {subtree: true, childList: true, characterData: true,
                                           attributes: true, attributeFilter: ['data-state']});
}
"""


def _open(driver: Any, gate: PlaygroundGate, key: str | None) -> None:
    driver.get("about:blank")
    driver.get(f"{gate.url}/playground" + (f"#key={key}" if key else ""))
    if key:
        WebDriverWait(driver, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pane-a option")) >= 2)
    driver.execute_script(RECORDER)


def _wait_state(driver: Any, pane: str, states: tuple[str, ...], timeout: float = 30) -> str:
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, pane).get_attribute("data-state") in states
    )
    return str(driver.find_element(By.ID, pane).get_attribute("data-state"))


def _stats(driver: Any, pane: str) -> dict[str, str]:
    return {
        c: driver.find_element(By.CSS_SELECTOR, f"#{pane} .{c}").text
        for c in ("prompt-tokens", "completion-tokens", "ttft", "latency", "tps")
    }


def test_a_prompt_streams_in_with_its_numbers(
    chromium: Any, playground_gate: PlaygroundGate, artifacts_dir: Path
) -> None:
    key = playground_gate.mint(daily_cap=10)
    _open(chromium, playground_gate, key)
    # the fragment is wiped at once and the key kept in this tab only
    assert "#" not in chromium.current_url and key not in chromium.current_url
    assert chromium.execute_script("return sessionStorage.getItem('warmstart.playground.key')") == key
    assert chromium.execute_script("return localStorage.length") == 0
    assert [o.text for o in chromium.find_elements(By.CSS_SELECTOR, "#pane-a option")] == [
        playground_gate.served_name, "default"]

    chromium.find_element(By.ID, "send").click()
    assert _wait_state(chromium, "pane-a", ("done", "error", "capped")) == "done"
    chromium.save_screenshot(str(artifacts_dir / "streamed.png"))

    assert chromium.find_element(By.CSS_SELECTOR, "#pane-a .output").get_attribute("textContent") == EXPECTED_TEXT
    log = [e for e in chromium.execute_script("return window.__ws") if e["pane"] == "pane-a"]
    lengths = sorted({e["len"] for e in log if e["state"] == "streaming"})
    # Incremental: the output grew through many intermediate lengths, not in one piece at the end.
    assert len(lengths) >= UPSTREAM_TOKENS // 2, lengths
    states = [e["state"] for e in log]
    # The upstream takes 1.5 s to its first token: the page says it is waking instead of looking stuck.
    assert "waking" in states and states.index("waking") < states.index("streaming")

    s = _stats(chromium, "pane-a")
    assert s["completion-tokens"] == str(UPSTREAM_TOKENS)
    assert int(s["prompt-tokens"]) > 0
    ttft, total = (float(re.fullmatch(r"([\d.]+) s", s[k]).group(1)) for k in ("ttft", "latency"))  # type: ignore[union-attr]
    assert 0 < ttft < total
    assert float(s["tps"]) > 0
    assert chromium.find_element(By.ID, "remaining").text == "9"
    assert chromium.find_element(By.ID, "limit").text.strip() == "/ 10"


def test_two_variants_side_by_side(chromium: Any, playground_gate: PlaygroundGate, artifacts_dir: Path) -> None:
    _open(chromium, playground_gate, playground_gate.mint(daily_cap=10))
    assert not chromium.find_element(By.ID, "pane-b").is_displayed()
    chromium.find_element(By.ID, "compare").click()
    assert chromium.find_element(By.ID, "pane-b").is_displayed()
    a = chromium.find_element(By.CSS_SELECTOR, "#pane-a select").get_attribute("value")
    b = chromium.find_element(By.CSS_SELECTOR, "#pane-b select").get_attribute("value")
    assert a != b  # preselected on different variants, so the comparison means something
    chromium.find_element(By.ID, "send").click()
    for pane in ("pane-a", "pane-b"):
        assert _wait_state(chromium, pane, ("done", "error", "capped")) == "done"
        assert _stats(chromium, pane)["completion-tokens"] == str(UPSTREAM_TOKENS)
    chromium.save_screenshot(str(artifacts_dir / "side-by-side.png"))
    log = chromium.execute_script("return window.__ws")
    # Both streamed at the same time: each pane was mid-stream while the other was too.
    streaming = {e["pane"] for e in log if e["state"] == "streaming" and 0 < e["len"] < len(EXPECTED_TEXT) - 1}
    assert streaming == {"pane-a", "pane-b"}
    assert chromium.find_element(By.ID, "remaining").text == "8"


def test_the_daily_cap_shows_a_clear_message(
    chromium: Any, playground_gate: PlaygroundGate, artifacts_dir: Path
) -> None:
    _open(chromium, playground_gate, playground_gate.mint(daily_cap=1))
    chromium.find_element(By.ID, "send").click()
    assert _wait_state(chromium, "pane-a", ("done", "error", "capped")) == "done"
    assert chromium.find_element(By.ID, "remaining").text == "0"
    chromium.find_element(By.ID, "send").click()
    assert _wait_state(chromium, "pane-a", ("capped", "error", "done")) == "capped"
    banner = chromium.find_element(By.ID, "banner")
    assert banner.is_displayed()
    assert re.fullmatch(r"daily limit reached, resets in (\d+h \d+m|\d+m \d+s|\d+s)", banner.text), banner.text
    chromium.save_screenshot(str(artifacts_dir / "daily-cap.png"))


def test_a_key_can_be_pasted_and_a_bad_one_is_refused(chromium: Any, playground_gate: PlaygroundGate) -> None:
    _open(chromium, playground_gate, None)
    chromium.execute_script("sessionStorage.clear()")
    chromium.refresh()
    WebDriverWait(chromium, 10).until(EC.visibility_of_element_located((By.ID, "banner")))
    assert "Paste a playground key" in chromium.find_element(By.ID, "banner").text

    field = chromium.find_element(By.ID, "key")
    field.send_keys("sk-not-a-warmstart-key")
    chromium.find_element(By.ID, "save-key").click()
    status = chromium.find_element(By.ID, "key-status")
    assert "does not look like a warmstart key" in status.text

    # A well-formed key the gate does not know: the page says what to do instead of breaking.
    field.clear()
    field.send_keys("ws_live_" + "0" * 64)
    chromium.find_element(By.ID, "save-key").click()
    WebDriverWait(chromium, 10).until(lambda d: "valid playground key" in d.find_element(By.ID, "banner").text)

    key = playground_gate.mint(daily_cap=5)
    field.clear()
    field.send_keys(key)
    chromium.find_element(By.ID, "save-key").click()
    WebDriverWait(chromium, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pane-a option")) >= 2)
    assert field.get_attribute("value") == ""  # not left on screen
    assert key[-4:] in chromium.find_element(By.ID, "key-status").text


def test_the_key_never_reaches_the_server_log(chromium: Any, playground_gate: PlaygroundGate) -> None:
    key = playground_gate.mint(daily_cap=2)
    _open(chromium, playground_gate, key)
    chromium.find_element(By.ID, "send").click()
    assert _wait_state(chromium, "pane-a", ("done", "error", "capped")) == "done"
    log = playground_gate.log()
    assert "/playground" in log or "chat/completions" in log  # the gate did log these requests
    assert key not in log and key[8:40] not in log


def test_stop_aborts_the_stream_all_the_way_to_the_engine(
    chromium: Any, playground_gate: PlaygroundGate
) -> None:
    _open(chromium, playground_gate, playground_gate.mint(daily_cap=5))
    aborted_before = playground_gate.upstream_stats()["aborted"]
    chromium.find_element(By.ID, "send").click()
    WebDriverWait(chromium, 20).until(
        lambda d: len(d.find_element(By.CSS_SELECTOR, "#pane-a .output").get_attribute("textContent")) > 10)
    chromium.find_element(By.ID, "stop").click()
    assert _wait_state(chromium, "pane-a", ("stopped", "done", "error")) == "stopped"
    assert len(chromium.find_element(By.CSS_SELECTOR, "#pane-a .output").get_attribute("textContent")) < len(EXPECTED_TEXT)
    assert chromium.find_element(By.ID, "send").is_enabled()
    # The gate closed its upstream connection when the browser went away, so the engine stopped
    # generating for nobody.
    WebDriverWait(chromium, 15).until(lambda _: playground_gate.upstream_stats()["aborted"] > aborted_before)
