"""Independent validators over what the program renders and ships, with a reviewed allow-list.

- parliament (PyPI): every IAM policy document in every environment's graph
- cloud-init schema (Debian's cloud-init): every rendered user data
- shellcheck: every shell script the user data writes and every script under runtime/image
A finding fails unless tests/stacks/validator_allowlist.yaml accepts it with a reason; an allow-list
entry that matches nothing fails as well, so the list cannot rot.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from runtime.image import cloudinit
from stacks.policy import policy_documents
from tests.support.pulumi_harness import stack_graph

HERE = Path(__file__).resolve().parent
ALLOWLIST: dict[str, list[dict[str, str]]] = yaml.safe_load((HERE / "validator_allowlist.yaml").read_text())
ENVS = ("dev", "staging", "prod")


@dataclass(frozen=True)
class Finding:
    tool: str
    code: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.tool} {self.code} at {self.where}: {self.detail}"


def _accepting(f: Finding) -> int | None:
    """Index of the allow-list entry that accepts this finding, if any."""
    for i, entry in enumerate(ALLOWLIST.get(f.tool) or []):
        code = entry.get("issue") or entry.get("code") or ""
        if code == f.code and entry["match"] in f"{f.where} {f.detail}":
            return i
    return None


def _fail_on(findings: list[Finding]) -> None:
    bad = [str(f) for f in findings if _accepting(f) is None]
    assert not bad, "unaccepted validator findings:\n" + "\n".join(bad)


def encoded_user_data() -> dict[str, str]:
    """name -> user data as the launch template carries it, for every environment."""
    return {f"{env}/{lt.name}": lt.inputs["userData"]
            for env in ENVS for lt in stack_graph(env).of_type("aws:ec2/launchTemplate:LaunchTemplate")}


def user_data() -> dict[str, str]:
    """name -> cloud-config text (decompressed), for every launch template of every environment."""
    return {name: cloudinit.decode(e) for name, e in encoded_user_data().items()}


def scripts() -> dict[str, str]:
    """name -> shell script: written by any user data, or shipped under runtime/image."""
    found: dict[str, str] = {}
    for name, ud in user_data().items():
        for path, content in cloudinit.shell_scripts(ud).items():
            found[f"{name}:{path}"] = content
    for p in sorted(cloudinit.HERE.rglob("*.sh")):
        found[str(p.relative_to(cloudinit.HERE.parent.parent))] = p.read_text()
    return found


@cache
def parliament_findings() -> tuple[Finding, ...]:
    from parliament import analyze_policy_string

    findings = []
    count = 0
    for env in ENVS:
        for res, field, doc in policy_documents(stack_graph(env)):
            count += 1
            for f in analyze_policy_string(json.dumps(doc)).findings:
                findings.append(Finding("parliament", f.issue, f"{env}/{res.name}.{field}", f"{f.detail}"))
    assert count >= 4 * len(ENVS)
    return tuple(findings)


@cache
def cloud_init_findings() -> tuple[Finding, ...]:
    findings = []
    uds = user_data()
    assert len(uds) == 2 * len(ENVS)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in uds.items():
            f = Path(tmp) / (name.replace("/", "_") + ".yaml")
            f.write_text(text)
            p = subprocess.run(["cloud-init", "schema", "--config-file", str(f)], capture_output=True, text=True,
                               timeout=120)
            if p.returncode != 0 or "Valid cloud-config" not in p.stdout:
                findings.append(Finding("cloud-init", "schema", name, (p.stdout + p.stderr).strip()))
    return tuple(findings)


@cache
def shellcheck_findings() -> tuple[Finding, ...]:
    found = scripts()
    names = set(found)
    assert any(n.endswith("replica-boot.sh") for n in names) and any(n.endswith("gate-boot.sh") for n in names)
    assert any(n.endswith("engine.sh.tpl") for n in names)
    findings = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, content) in enumerate(sorted(found.items())):
            f = Path(tmp) / f"{i}.sh"
            f.write_text(content)
            p = subprocess.run(["shellcheck", "--format=json1", "--severity=style", str(f)], capture_output=True,
                               text=True, timeout=120)
            assert p.returncode in (0, 1), p.stderr
            doc: dict[str, Any] = json.loads(p.stdout or '{"comments": []}')
            for c in doc["comments"]:
                findings.append(Finding("shellcheck", f"SC{c['code']}", f"{name}:{c['line']}", c["message"]))
    return tuple(findings)


def test_iam_documents_pass_parliament() -> None:
    _fail_on(list(parliament_findings()))


def test_parliament_catches_a_bad_document() -> None:
    """The validator is live: a misspelled action is reported."""
    from parliament import analyze_policy_string

    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObjekt"], "Resource": "*"}]}
    assert "UNKNOWN_ACTION" in {f.issue for f in analyze_policy_string(json.dumps(doc)).findings}


def test_user_data_passes_cloud_init_schema() -> None:
    _fail_on(list(cloud_init_findings()))


def test_user_data_fits_the_ec2_limit_with_room() -> None:
    """EC2 refuses user data over 16 KB; the replica's ran at ~15 KB base64 before compression."""
    encoded = encoded_user_data()
    assert len(encoded) == 2 * len(ENVS)
    for name, e in encoded.items():
        # Half the limit: room for the next script or unit, and the base64 form bounds the raw one.
        assert len(e) < cloudinit.USER_DATA_LIMIT // 2, f"{name}: {len(e)} bytes of user data"
        assert base64.b64decode(e)[:2] == b"\x1f\x8b", f"{name}: not gzip-compressed"


def test_cloud_init_reads_the_compressed_user_data(tmp_path: Path) -> None:
    """Debian's cloud-init (the code a machine boots with) decompresses what the launch template carries
    into the very cloud-config the schema check validates."""
    interpreter = Path(shutil.which("cloud-init") or "cloud-init").read_text().splitlines()[0].removeprefix("#!")
    reader = ("import sys\nfrom cloudinit.user_data import UserDataProcessor\n"
              "msg = UserDataProcessor({}).process(open(sys.argv[1], 'rb').read())\n"
              "parts = [p for p in msg.walk() if not p.is_multipart()]\n"
              "assert [p.get_content_type() for p in parts] == ['text/cloud-config'], parts\n"
              "sys.stdout.buffer.write(parts[0].get_payload(decode=True))\n")
    for name, e in encoded_user_data().items():
        if not name.startswith("prod/"):
            continue
        f = tmp_path / "user-data"
        f.write_bytes(base64.b64decode(e))
        p = subprocess.run([interpreter.strip(), "-c", reader, str(f)], capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.decode() == cloudinit.decode(e), name


def test_cloud_init_schema_catches_a_bad_document(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("#cloud-config\nwrite_files:\n  - content: no path\n    permissions: 755\n")
    p = subprocess.run(["cloud-init", "schema", "--config-file", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0


def test_scripts_pass_shellcheck() -> None:
    _fail_on(list(shellcheck_findings()))


def test_shellcheck_catches_a_bad_script(tmp_path: Path) -> None:
    f = tmp_path / "bad.sh"
    f.write_text("#!/bin/bash\nrm -rf $1/*\n")
    p = subprocess.run(["shellcheck", "--format=json1", str(f)], capture_output=True, text=True, timeout=60)
    assert 2086 in {c["code"] for c in json.loads(p.stdout)["comments"]}


def test_allowlist_entries_have_reasons_and_are_used() -> None:
    for tool, entries in ALLOWLIST.items():
        for e in entries or []:
            assert str(e.get("reason", "")).strip(), f"{tool} entry {e} has no reason"
            assert e.get("match"), f"{tool} entry {e} has no match"
    every = {(tool, i) for tool, entries in ALLOWLIST.items() for i, _ in enumerate(entries or [])}
    used = {(f.tool, i) for f in (*parliament_findings(), *cloud_init_findings(), *shellcheck_findings())
            if (i := _accepting(f)) is not None}
    unused = every - used
    assert not unused, f"allow-list entries that match no finding any more: {sorted(unused)}"
