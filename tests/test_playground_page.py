"""The playground page as the real gate serves it (gunicorn, real socket): headers, assets, no inline
code; and `warmstart endpoint metrics --local` reading that gate's real /metrics after real traffic."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import openai
import pytest
from click.testing import CliRunner

from tests.support.playground import UPSTREAM_TOKENS, PlaygroundGate
from warmstart.monitoring.cli import metrics


class _Audit(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, event handlers, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}>")
        if tag == "style":
            self.inline.append("<style>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline <script> body")


def test_page_and_assets_carry_a_strict_csp(playground_gate: PlaygroundGate) -> None:
    for path in ("/playground", "/playground/", "/playground/static/playground.js",
                 "/playground/static/playground.css"):
        status, headers, body = playground_gate.get(path)
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert body
    _, headers, _ = playground_gate.get("/playground/static/playground.js")
    assert headers["content-type"].startswith("text/javascript")


def test_page_has_no_inline_code(playground_gate: PlaygroundGate) -> None:
    _, _, body = playground_gate.get("/playground")
    audit = _Audit()
    audit.feed(body.decode())
    assert audit.inline == []
    assert [s.get("src") for s in audit.scripts] == ["/playground/static/playground.js"]


@pytest.mark.parametrize("path", [
    "/playground/static/../playground.py",
    "/playground/static/%2e%2e/playground.py",
    "/playground/static/..%2f..%2fconfig.py",
    "/playground/static/nope.js",
])
def test_assets_cannot_reach_other_files(playground_gate: PlaygroundGate, path: str) -> None:
    status, _, body = playground_gate.get(path)
    assert status == 404
    assert b"import" not in body


def test_metrics_command_reads_the_real_gate(playground_gate: PlaygroundGate) -> None:
    key = playground_gate.mint(kind="api")
    before = json.loads(CliRunner().invoke(metrics, ["--local", "--url", playground_gate.url, "--json"]).output)
    client = openai.OpenAI(base_url=playground_gate.url + "/v1", api_key=key, max_retries=0)

    def one(_: int) -> str:
        stream = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(3) as pool:  # concurrent, so both gunicorn workers likely serve some
        texts = list(pool.map(one, range(3)))
    assert all(t.startswith("tok0 ") for t in texts)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=playground_gate.url + "/v1", api_key="ws_live_" + "0" * 64,
                      max_retries=0).models.list()

    res = CliRunner().invoke(metrics, ["--local", "--url", playground_gate.url, "--json"])
    assert res.exit_code == 0, res.output
    after = json.loads(res.output)
    # Two gunicorn workers write separate files; /metrics aggregates them and so must we.
    assert after["requests"] - before["requests"] == 3
    assert after["tokens_out"] - before["tokens_out"] == 3 * UPSTREAM_TOKENS
    assert after["replicas_ready"] == 1 and after["in_flight"] == 0 and after["lease_leaks"] == 0
    # the upstream waits 1.5 s before the first token: the TTFT histogram says so
    assert after["ttft_p50_s"] is not None and 1.0 <= after["ttft_p50_s"] <= 2.0
    assert after["latency_p50_s"] is not None and after["latency_p50_s"] >= after["ttft_p50_s"]

    text = CliRunner().invoke(metrics, ["--local", "--url", playground_gate.url])
    assert "first token  p50 " in text.output and "local (CPU): no cloud cost" in text.output


def test_warmstart_endpoint_metrics_runs_from_the_command_line(playground_gate: PlaygroundGate) -> None:
    """The fleet's `warmstart endpoint` group registers this command lazily; run it as a user would."""
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "warmstart", "endpoint", "metrics", "--local", "--url", playground_gate.url, "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["source"] == f"local:{playground_gate.url}"
    bad = subprocess.run(
        [sys.executable, "-m", "warmstart", "endpoint", "metrics", "--local", "--stack", "dev"],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: pass exactly one of --stack ENV or --local"
