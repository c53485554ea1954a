"""checkov's Kubernetes checks over the EKS substrate's rendered manifests (one checkov run per
test session: it takes about ten seconds). A finding fails the build unless
tests/components/checkov_allowlist.yaml accepts it with a reason."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s_manifests import manifests, write_yaml
from tests.support.pulumi_harness import stack_graph

ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = Path(__file__).with_name("checkov_allowlist.yaml")
# checkov pins boto3/packaging/networkx versions the project cannot share, so `make setup`
# installs it in its own virtualenv; WARMSTART_CHECKOV overrides the path.
CHECKOV = Path(os.environ.get("WARMSTART_CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))


def _failed(report: Any) -> list[dict[str, Any]]:
    reports = report if isinstance(report, list) else [report]
    return [f for r in reports if isinstance(r, dict) for f in (r.get("results") or {}).get("failed_checks", [])]


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    assert CHECKOV.exists(), f"checkov is not installed at {CHECKOV}; run `make setup`"
    out_dir = tmp_path_factory.mktemp("eks-manifests")
    written = write_yaml(manifests(stack_graph("eks-dev")), out_dir)
    assert len(written) >= 15
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(out_dir), "--framework", "kubernetes", "--output", "json", "--compact",
         "--skip-download"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"},
    )
    # Exit status 1 means "findings"; anything else is checkov failing to run.
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 15, summary
    return sorted({(f["check_id"], f["resource"]) for f in _failed(report)})


def _allowed() -> dict[tuple[str, str], str]:
    entries = yaml.safe_load(ALLOWLIST.read_text())
    return {(e["check"], e["resource"]): str(e.get("reason") or "").strip() for e in entries}


def test_every_finding_is_allow_listed(findings: list[tuple[str, str]]) -> None:
    unexplained = [f for f in findings if f not in _allowed()]
    assert unexplained == [], "fix these or add them to tests/components/checkov_allowlist.yaml with a reason"


def test_every_allow_list_entry_has_a_reason_and_still_applies(findings: list[tuple[str, str]]) -> None:
    for key, reason in _allowed().items():
        assert len(reason) > 40, f"{key}: give a reason"
        assert key in findings, f"{key} no longer fails: remove it from the allow-list"


def test_the_replica_and_gate_pass_the_container_checks(findings: list[tuple[str, str]]) -> None:
    """vLLM itself has no exception at all; the gate only the one for its API token."""
    assert [c for c, r in findings if r == "Deployment.ws-eks-dev-chat.vllm"] == []
    assert [c for c, r in findings if r == "Deployment.ws-eks-dev-chat.gate"] == ["CKV_K8S_38"]
