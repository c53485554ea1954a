"""The stack program: every environment renders, exports, conventions, config errors, the CLI."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from runtime.image import cloudinit
from stacks.config import gate_image_beside, parse_stack_config, read_stack_file
from stacks.preview import Graph
from tests.support.pulumi_harness import render_values, stack_values, with_endpoint
from warmstart import docs
from warmstart.cli import cli
from warmstart.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = {"network": "Network", "weights": "WeightCache", "nodegroup": "GpuNodeGroup", "scaling": "Scaling",
              "edge": "Edge", "keys": "Keys", "monitoring": "Monitoring", "deployment": "Deployment"}


def test_environment_renders_and_exports(env_graph: Graph) -> None:
    out = env_graph.outputs
    assert set(out) == {"endpoints", "endpoint_url", "api_key", "dashboard_url", "variant"}
    assert out["api_key"]["secret"] is True and out["endpoints"]["secret"] is True
    assert out["endpoint_url"]["secret"] is False and out["endpoint_url"]["value"].endswith("/v1")
    assert out["endpoints"]["value"]["chat"]["variant"] == out["variant"]["value"]
    types = env_graph.counts()
    for module, cls in COMPONENTS.items():
        assert types[f"warmstart:{module}:{cls}"] == 1, module
    assert types["aws:autoscaling/group:Group"] == 2


def test_component_conventions(env_graph: Graph) -> None:
    by_name = {r.name: r for r in env_graph}
    for r in env_graph:
        if r.type.startswith("warmstart:"):
            _, module, cls = r.type.split(":")
            assert getattr(importlib.import_module(f"components.{module}"), cls)
            assert hasattr(importlib.import_module(f"components.{module}"), f"{cls}Args")
        if r.parent is None:
            assert r.type == "warmstart:deployment:Deployment", r.name
            continue
        # every child is parented and named from its component
        parent = by_name[r.parent]
        assert parent.type.startswith("warmstart:"), r.name
        assert r.name.startswith(parent.name), (r.name, parent.name)


def test_two_endpoints_in_one_stack() -> None:
    values = stack_values("dev")
    second = {**values["warmstart:endpoints"][0], "name": "code", "variant": "llama31-8b-eagle3-l40s"}
    values["warmstart:endpoints"].append(second)
    g = render_values(values)
    assert {r.name for r in g.of_type("warmstart:deployment:Deployment")} == {"chat", "code"}
    assert set(g.outputs) == {"endpoints"}
    assert set(g.outputs["endpoints"]["value"]) == {"chat", "code"}
    assert {r.inputs["name"] for r in g.of_type("aws:autoscaling/group:Group")} == {
        "ws-dev-chat-replicas", "ws-dev-chat-gate", "ws-dev-code-replicas", "ws-dev-code-gate"}


def test_endpoint_image_overrides_the_stack_image() -> None:
    values = with_endpoint("dev", image_uri="111111111111.dkr.ecr.eu-west-1.amazonaws.com/warmstart-runtime:2")
    values.pop("warmstart:imageUri")
    g = render_values(values)
    ud = cloudinit.decode(g.one("aws:ec2/launchTemplate:LaunchTemplate", "replicas-lt").inputs["userData"])
    assert "IMAGE_URI=111111111111.dkr.ecr.eu-west-1.amazonaws.com/warmstart-runtime:2" in ud
    gate = cloudinit.decode(g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs["userData"])
    assert "IMAGE_URI=111111111111.dkr.ecr.eu-west-1.amazonaws.com/warmstart-gate:2" in gate


@pytest.mark.parametrize(("runtime", "gate"), [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-runtime:0.1.0",
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-gate:0.1.0"),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/team/warmstart-runtime:abc",
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/warmstart-gate:abc"),
    ("warmstart-runtime", "warmstart-gate"),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/warmstart-runtime@sha256:" + "a" * 64, None),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:0.1.0", None),
])
def test_gate_image_sits_beside_the_runtime_image(runtime: str, gate: str | None) -> None:
    """The slim gate image is pushed as repository warmstart-gate beside warmstart-runtime, same tag;
    a digest names one image only, so nothing is derived from it."""
    assert gate_image_beside(runtime) == gate


def test_gate_image_is_set_or_derivable() -> None:
    values = with_endpoint("dev")
    values["warmstart:imageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:1"
    with pytest.raises(ConfigError, match=r"warmstart:gateImageUri is not set and endpoint chat's runtime image "
                                          r"'123456789012.dkr.ecr.us-east-1.amazonaws.com/vllm:1' is not in a "
                                          r"repository named warmstart-runtime"):
        parse_stack_config(values, source="s")
    values["warmstart:gateImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gate:1"
    g = render_values(values)
    gate = cloudinit.decode(g.one("aws:ec2/launchTemplate:LaunchTemplate", "gate-lt").inputs["userData"])
    assert "IMAGE_URI=123456789012.dkr.ecr.us-east-1.amazonaws.com/gate:1" in gate
    doc = json.loads(g.one("aws:iam/rolePolicy:RolePolicy", "gate-policy").inputs["policy"])
    pull = next(s for s in doc["Statement"] if s["Sid"] == "EcrPull")
    assert pull["Resource"] == ["arn:aws:ecr:us-east-1:123456789012:repository/gate"]  # the gate image only


# --- config errors: one line naming the value and the fix ---------------------------------------


def _values(**top: Any) -> dict[str, Any]:
    values = stack_values("dev")
    for k, v in top.items():
        if v is None:
            values.pop(k, None)
        else:
            values[k] = v
    return values


CONFIG_ERRORS: list[tuple[dict[str, Any], str]] = [
    (_values(**{"warmstart:environment": None}), "s: warmstart:environment is not set; set it to dev, staging or prod"),
    (_values(**{"aws:region": None}), "s: aws:region is not set; set it, e.g. aws:region: us-east-1"),
    (_values(**{"aws:region": "mars-1"}), "s: aws:region='mars-1' is not an AWS region; use e.g. us-east-1"),
    (_values(**{"warmstart:substrate": "lambda"}), "s: warmstart:substrate='lambda' is not available; use one of "),
    (_values(**{"warmstart:imageUri": None}), "s: warmstart:imageUri is not set (nor endpoint chat's image_uri); "
                                              "build runtime/image, push it to ECR and set warmstart:imageUri to its URI"),
    (_values(**{"warmstart:endpoints": []}), "s: warmstart:endpoints must be a non-empty list of endpoints; add one"),
    (_values(**{"warmstart:endpoints": "[not json"}), "warmstart:endpoints is not valid JSON; give a list of endpoint objects"),
    (with_endpoint("dev", variant="smollm2-135m-cpu"), "s: endpoint chat uses variant 'smollm2-135m-cpu' with "
                                                       "gpu.instance_type='cpu' (local only); pick a GPU variant for AWS"),
    (with_endpoint("dev", environment="prod"), "s: endpoint chat has environment='prod' in stack environment 'dev'; "
                                               "remove its environment key"),
    (with_endpoint("dev", max_replicas=12), "endpoint chat: max_replicas=12 exceeds plan pro (8); raise the plan or "
                                            "lower max_replicas"),
    (with_endpoint("dev", variant="nope"), "variant='nope' has no file "),
]


@pytest.mark.parametrize(("values", "message"), CONFIG_ERRORS, ids=[m[:40] for _, m in CONFIG_ERRORS])
def test_config_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_stack_config(values, source="s")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_error_also_fails_the_real_program() -> None:
    with pytest.raises(ConfigError, match=r"max_replicas=12 exceeds plan pro \(8\)"):
        render_values(with_endpoint("dev", max_replicas=12))


def test_duplicate_endpoint_names() -> None:
    values = stack_values("dev")
    values["warmstart:endpoints"].append(dict(values["warmstart:endpoints"][0]))
    with pytest.raises(ConfigError, match=r"^s: endpoint name 'chat' appears twice; names must be unique$"):
        parse_stack_config(values, source="s")


def test_variant_without_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nosnap.yaml").write_text("model: m\nserved_name: s\ngpu: {instance_type: g6.xlarge}\n")
    monkeypatch.setenv("WARMSTART_VARIANTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"variant 'nosnap' has no weights_snapshot_id; run `warmstart weights "
                                          r"build nosnap`"):
        parse_stack_config(with_endpoint("dev", variant="nosnap"), source="s")


def test_stack_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^stack='qa' has no file .*Pulumi.qa.yaml; use one of: none$"):
        read_stack_file("qa", tmp_path)
    (tmp_path / "Pulumi.qa.yaml").write_text("config: [unclosed\n")
    with pytest.raises(ConfigError, match=r"Pulumi.qa.yaml: not valid YAML .*; fix the file$"):
        read_stack_file("qa", tmp_path)
    (tmp_path / "Pulumi.qa.yaml").write_text("encryptionsalt: x\n")
    with pytest.raises(ConfigError, match=r"Pulumi.qa.yaml: expected a top-level `config:` mapping$"):
        read_stack_file("qa", tmp_path)


# --- the CLI --------------------------------------------------------------------------------------


def test_preview_json_contract() -> None:
    result = CliRunner().invoke(cli, ["preview", "--stack", "prod", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {"resources"}
    for r in doc["resources"]:
        assert {"type", "name", "parent", "inputs", "options"} <= set(r)
        assert {"ignore_changes", "protect", "retain_on_delete", "depends_on"} <= set(r["options"])
    asg = next(r for r in doc["resources"] if r["name"] == "chat-replicas-asg")
    assert asg["options"]["ignore_changes"] == ["desiredCapacity"] and asg["parent"] == "chat-replicas"
    param = next(r for r in doc["resources"] if r["type"] == "aws:ssm/parameter:Parameter")
    assert param["inputs"]["value"] == "[secret]"


def test_preview_tree() -> None:
    result = CliRunner().invoke(cli, ["preview", "--stack", "dev"])
    assert result.exit_code == 0, result.output
    assert "warmstart:deployment:Deployment  chat" in result.output
    assert "\n  warmstart:nodegroup:GpuNodeGroup  chat-replicas\n" in result.output
    assert "     2  aws:autoscaling/group:Group" in result.output


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}  # no AWS credentials, no Pulumi CLI
    return subprocess.run([sys.executable, "-m", "warmstart", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_preview_unknown_stack_is_one_line_exit_2() -> None:
    p = _run_cli("preview", "--stack", "bad")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: stack='bad' has no file ")
    assert "use one of: dev, " in p.stderr and "Traceback" not in p.stderr


def test_preview_bad_stack_file_is_one_line_exit_2(tmp_path: Path) -> None:
    values = stack_values("dev")
    values["warmstart:endpoints"][0]["mode"] = "active"
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump({"config": values}))
    p = _run_cli("preview", "--stack", "bad", "--stack-dir", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr == (f"error: {tmp_path / 'Pulumi.bad.yaml'}: endpoint chat: mode='active' needs plan team or "
                        "higher, got plan='pro'; use mode flex or raise the plan\n")


def test_preview_prod_json_in_a_fresh_process() -> None:
    p = _run_cli("preview", "--stack", "prod", "--json")
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["resources"]) > 50


# --- docs -----------------------------------------------------------------------------------------


def test_config_doc_is_generated_from_the_spec() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert docs.readme_section(text) == docs.config_reference(), "run: python -m warmstart.docs --write"


def test_every_endpoint_field_is_documented() -> None:
    from warmstart.spec import EndpointConfig, Variant

    for model in (EndpointConfig, Variant):
        for name, field in model.model_fields.items():
            assert field.description or name == "description", f"{model.__name__}.{name} has no description"


def test_pulumi_yaml_declares_every_key_the_program_reads() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["main"] == "stacks/" and project["stackConfigDir"] == "stacks"
    assert project["runtime"]["options"]["virtualenv"] == ".venv"
    from stacks.config import STACK_KEYS

    declared = set(project["config"])
    # Pulumi's schema has no object type: structured keys are validated by the program instead.
    structured = {"warmstart:endpoints", "warmstart:eks", "warmstart:ebsKmsKeyArns"}
    assert all(project["config"][k]["type"] in ("string", "integer", "boolean") for k in declared)
    assert {k for k in STACK_KEYS if k.startswith("warmstart:")} - structured <= declared
    for env in ("dev", "staging", "prod"):
        assert set(read_stack_file(env)) <= declared | structured | {"aws:region"}


def test_preview_output_is_stable_across_runs() -> None:
    from stacks.preview import render_stack, tree

    a, b = render_stack("staging"), render_stack("staging")
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert tree(a) == tree(b)


def test_pulumi_entry_point_runs_the_program() -> None:
    """What `pulumi up` executes (Pulumi.yaml main: stacks/) declares the same graph."""
    import runpy

    from stacks.preview import record

    values = stack_values("dev")
    g = record(lambda: runpy.run_path(str(ROOT / "stacks" / "__main__.py"), run_name="__main__"), config=values,
               stack="dev")
    assert len(g.resources) == len(render_values(values).resources)
    assert g.outputs["variant"]["value"] == "llama31-8b-fp8-l4"


def test_volume_keys_are_granted_to_the_auto_scaling_role() -> None:
    """Accounts whose EBS default encryption (or a weights snapshot) uses a customer-managed key:
    AWSServiceRoleForAutoScaling must be allowed to use it ("Required AWS KMS key policy for use
    with encrypted volumes": Encrypt, Decrypt, ReEncrypt*, GenerateDataKey*, DescribeKey,
    CreateGrant), or every launch fails with Client.InternalError. A grant per key, after the groups
    (whose creation creates that role)."""
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    values = stack_values("dev")
    values["warmstart:ebsKmsKeyArns"] = [key]
    g = render_values(values)
    (grant,) = g.of_type("aws:kms/grant:Grant")
    assert grant.inputs["keyId"] == key
    assert grant.inputs["granteePrincipal"] == (
        "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling")
    assert set(grant.inputs["operations"]) == {"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GenerateDataKey",
                                               "GenerateDataKeyWithoutPlaintext", "DescribeKey", "CreateGrant"}
    assert {"chat-edge-gate-asg", "chat-replicas-asg"} <= set(grant.options["depends_on"])
    assert render_values(stack_values("dev")).of_type("aws:kms/grant:Grant") == []  # AWS-managed key: nothing to grant
    values["warmstart:ebsKmsKeyArns"] = ["alias/my-ebs"]
    with pytest.raises(ConfigError, match=r"warmstart:ebsKmsKeyArns has 'alias/my-ebs', not a KMS key ARN; use "
                                          r"arn:aws:kms:REGION:ACCOUNT:key/KEY-ID"):
        parse_stack_config(values, source="s")
