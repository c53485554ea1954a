"""The typed spec: every validation error message, variant loading, the scale-out rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmstart.errors import ConfigError, VariantNotFound
from warmstart.spec import (
    GPU_INSTANCES,
    PLANS,
    EndpointConfig,
    get_gpu,
    get_plan,
    list_variants,
    load_variant,
    parse_endpoint,
    parse_variant,
    replicas_needed,
)

GPU_LIST = ", ".join(t for t in GPU_INSTANCES if t != "cpu")
EP: dict[str, Any] = {"name": "chat", "variant": "llama31-8b-fp8-l4", "allow_http": True}
VARIANT: dict[str, Any] = {"name": "v", "model": "m", "served_name": "s", "gpu": {"instance_type": "g6.xlarge"}}
NGRAM = {"method": "ngram", "num_speculative_tokens": 2}

ENDPOINT_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"name": "Chat_1"}, "endpoint Chat_1: name='Chat_1': endpoint='Chat_1' is not a valid name; use 1-40 "
                         "lowercase letters, digits and '-' (it becomes part of AWS resource names)"),
    ({"plan": "gold"}, "endpoint chat: plan='gold' is not a plan; use one of starter, pro, team, enterprise"),
    ({"log_retention_days": 2}, "endpoint chat: log_retention_days=2 is not a CloudWatch retention; use one of "
                                "(1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653)"),
    ({"gpu_instance_type": "g9.huge"}, "endpoint chat: gpu_instance_type='g9.huge': gpu.instance_type='g9.huge' is "
                                       f"not a supported GPU instance type; use one of {GPU_LIST}"),
    ({"plan": "starter"}, "endpoint chat: plan='starter' cannot deploy an endpoint (playground only); "
                          "use plan pro or higher"),
    ({"plan": "team", "plan_limits": {"max_replicas": 3, "max_concurrency": 90}},
     "endpoint chat: plan_limits is only for plan enterprise, got plan='team'; remove plan_limits"),
    ({"max_replicas": 12}, "endpoint chat: max_replicas=12 exceeds plan pro (8); raise the plan or lower max_replicas"),
    ({"mode": "active", "plan": "team", "min_replicas": 3, "max_replicas": 2},
     "endpoint chat: min_replicas=3 exceeds max_replicas=2; lower min_replicas or raise max_replicas"),
    ({"mode": "active", "min_replicas": 1}, "endpoint chat: mode='active' needs plan team or higher, got "
                                            "plan='pro'; use mode flex or raise the plan"),
    ({"mode": "active", "plan": "team", "min_replicas": 0},
     "endpoint chat: mode='active' keeps replicas up but min_replicas=0; set min_replicas >= 1 or use mode flex"),
    ({"min_replicas": 1}, "endpoint chat: mode='flex' scales to zero but min_replicas=1; set min_replicas 0 or use "
                          "mode active (plan team or higher)"),
    ({"allow_http": False}, "endpoint chat: no domain is set and allow_http is false; set domain (HTTPS) or "
                            "allow_http: true"),
    ({"environment": "prod"}, "endpoint chat: gate_instances=1 in prod; prod needs >= 2 gates across AZs"),
    ({"warm_pool_size": 3}, "endpoint chat: warm_pool_size=3 exceeds max_replicas=2; a warm pool larger than the "
                            "group can never be used, lower it"),
    ({"colour": "blue"}, "endpoint chat: colour is not a known setting; remove it or check its spelling"),
    ({"variant": None}, "endpoint chat: variant is required; set it"),
    ({"max_replicas": "many"}, "endpoint chat: max_replicas='many': Input should be a valid integer, unable to "
                               "parse string as an integer"),
    ({"network": {"vpc_id": "vpc-1", "public_subnet_ids": ["subnet-a"], "private_subnet_ids": ["b", "c"]}},
     "endpoint chat: network.public_subnet_ids has 1 subnet(s); give at least 2 in different AZs"),
    ({"network": {"vpc_id": "vpc-1", "public_subnet_ids": ["a", "b"], "private_subnet_ids": []}},
     "endpoint chat: network.private_subnet_ids has 0 subnet(s); give at least 2 in different AZs"),
]

VARIANT_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"name": "-bad"}, "variant -bad: name='-bad': variant='-bad' is not a valid name; use 1-40 lowercase letters, "
                       "digits and '-' (it becomes part of AWS resource names)"),
    ({"weights_snapshot_id": "snapshot-1"},
     "variant v: weights_snapshot_id='snapshot-1' is not an EBS snapshot id; expected snap-<hex>"),
    ({"engine": {"tensor_parallel_size": 3}}, "variant v: tensor_parallel_size=3 must be a power of two (1, 2, 4 or 8)"),
    ({"engine": {"tensor_parallel_size": 2}}, "variant v: engine.tensor_parallel_size=2 exceeds the 1 GPU(s) of "
                                              "g6.xlarge; pick a larger instance type or lower tensor_parallel_size"),
    ({"gpu": {"instance_type": "cpu"}, "engine": {"tensor_parallel_size": 2}},
     "variant v: engine.tensor_parallel_size=2 needs GPUs but gpu.instance_type='cpu'; set it to 1"),
    ({"gpu": {"instance_type": "g6.12xlarge", "fallback_instance_types": ["g6.xlarge"]},
      "engine": {"tensor_parallel_size": 4}},
     "variant v: gpu.fallback_instance_types contains 'g6.xlarge' with 1 GPU(s), fewer than tensor_parallel_size=4; "
     "remove it or pick a larger type"),
    ({"gpu": {"instance_type": "k80"}},
     f"variant v: gpu.instance_type='k80' is not a supported GPU instance type; use one of {GPU_LIST}"),
    ({"gpu": {"instance_type": "g6.xlarge", "fallback_instance_types": ["z1.big"]}},
     "variant v: gpu.fallback_instance_types=['z1.big']: gpu.instance_type='z1.big' is not a supported GPU "
     f"instance type; use one of {GPU_LIST}"),
    ({"engine": {"extra_args": ["--port=9"]}},
     "variant v: extra_args contains '--port=9'; warmstart sets --port itself, remove it"),
    ({"engine": {"speculative_config": {**NGRAM, "prompt_lookup_max": 4, "model": "x"}}},
     "variant v: speculative_config.model='x' is not used by method 'ngram'; remove it"),
    ({"engine": {"speculative_config": NGRAM}},
     "variant v: speculative_config.prompt_lookup_max is required for method 'ngram'; set it (4 is a good start)"),
    ({"engine": {"speculative_config": {**NGRAM, "prompt_lookup_max": 2, "prompt_lookup_min": 3}}},
     "variant v: speculative_config.prompt_lookup_min=3 exceeds prompt_lookup_max=2; lower min or raise max"),
    ({"engine": {"speculative_config": {"method": "eagle3", "num_speculative_tokens": 2}}},
     "variant v: speculative_config.model is required for method 'eagle3'; name the draft/EAGLE model directory"),
]


@pytest.mark.parametrize(("override", "message"), ENDPOINT_ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in ENDPOINT_ERRORS])
def test_endpoint_error_message(override: dict[str, Any], message: str) -> None:
    data = {k: v for k, v in {**EP, **override}.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        parse_endpoint(data)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("override", "message"), VARIANT_ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in VARIANT_ERRORS])
def test_variant_error_message(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_variant({**VARIANT, **override})
    assert str(e.value) == message


def test_valid_endpoints_and_derived_values() -> None:
    ep = parse_endpoint({**EP, "plan": "enterprise", "mode": "active", "min_replicas": 2, "max_replicas": 300,
                         "plan_limits": {"max_replicas": 300, "max_concurrency": 9000}})
    assert ep.plan_obj.max_replicas == 300 and ep.plan_obj.max_concurrency == 9000
    v = load_variant("llama31-8b-fp8-l4")
    assert ep.instance_type_for(v) == "g6.xlarge"
    assert parse_endpoint({**EP, "gpu_instance_type": "g5.xlarge"}).instance_type_for(v) == "g5.xlarge"
    assert ep.cap_for(v) == 30 and parse_endpoint({**EP, "replica_cap": 12}).cap_for(v) == 12
    assert parse_endpoint({**EP, "domain": "a.example.com", "allow_http": False}).domain == "a.example.com"


def test_plans_are_the_product_numbers() -> None:
    assert (PLANS["pro"].max_replicas, PLANS["pro"].max_concurrency) == (8, 240)
    assert (PLANS["team"].max_replicas, PLANS["team"].max_concurrency) == (32, 960)
    assert not PLANS["starter"].can_deploy and PLANS["starter"].playground_daily_requests == 100
    assert not PLANS["pro"].allows_active and PLANS["team"].allows_active
    assert PLANS["pro"].concurrency_budget(3, 30) == 90
    assert PLANS["pro"].concurrency_budget(100, 30) == 240
    assert PLANS["pro"].concurrency_budget(-1, 30) == 0


def test_lookup_errors() -> None:
    with pytest.raises(ConfigError, match=r"^plan='gold' is not a plan; use one of starter, pro, team, enterprise$"):
        get_plan("gold")
    with pytest.raises(ConfigError, match=r"^gpu.instance_type='k80' is not a supported GPU instance type"):
        get_gpu("k80")
    with pytest.raises(ValueError, match=r"^target_per_replica=0 must be >= 1$"):
        replicas_needed(5, 0, 0, 4)


# --- variants on disk -------------------------------------------------------------------------


def test_shipped_variants_load() -> None:
    names = {v.name for v in list_variants()}
    assert {"smollm2-135m-cpu", "smollm2-135m-cpu-ngram", "llama31-8b-fp8-l4", "llama31-8b-eagle3-l40s"} <= names
    eagle = load_variant("llama31-8b-eagle3-l40s")
    assert eagle.on_gpu and eagle.engine.speculative_config is not None
    assert eagle.engine.speculative_config.method == "eagle3"
    assert not load_variant("smollm2-135m-cpu").on_gpu


def _write(root: Path, name: str, text: str) -> None:
    (root / f"{name}.yaml").write_text(text)


def test_variant_file_errors(tmp_path: Path) -> None:
    _write(tmp_path, "good", "model: m\nserved_name: s\ngpu: {instance_type: g6.xlarge}\n")
    with pytest.raises(VariantNotFound) as e:
        load_variant("nope", tmp_path)
    assert str(e.value) == (f"variant='nope' has no file {tmp_path / 'nope.yaml'}; use one of: good "
                            "(or add nope.yaml)")
    _write(tmp_path, "broken", "model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML .*; fix the file$"):
        load_variant("broken", tmp_path)
    _write(tmp_path, "listy", "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"listy.yaml: expected a mapping of variant settings, got list$"):
        load_variant("listy", tmp_path)
    _write(tmp_path, "other", "name: else\nmodel: m\nserved_name: s\ngpu: {instance_type: g6.xlarge}\n")
    with pytest.raises(ConfigError, match=r"other.yaml: name='else' differs from the file name; rename one$"):
        load_variant("other", tmp_path)
    assert load_variant("good", tmp_path).name == "good"


def test_variants_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "mine", "model: m\nserved_name: s\ngpu: {instance_type: cpu}\n")
    monkeypatch.setenv("WARMSTART_VARIANTS_DIR", str(tmp_path))
    assert [v.name for v in list_variants()] == ["mine"]


def test_values_are_frozen() -> None:
    ep = EndpointConfig(name="chat", variant="x", allow_http=True)
    with pytest.raises(ValueError, match="frozen"):
        ep.max_replicas = 5  # type: ignore[misc]


# --- the scale-out rule -----------------------------------------------------------------------


@given(
    in_flight=st.integers(min_value=-10, max_value=100_000),
    target=st.integers(min_value=1, max_value=1024),
    lo=st.integers(min_value=0, max_value=64),
    span=st.integers(min_value=0, max_value=256),
)
def test_replicas_needed_is_ceil_clamped(in_flight: int, target: int, lo: int, span: int) -> None:
    hi = lo + span
    n = replicas_needed(in_flight, target, lo, hi)
    assert lo <= n <= hi
    raw = math.ceil(max(in_flight, 0) / target)
    assert n == min(hi, max(lo, raw))
    if lo < n < hi:
        # exactly enough: n replicas hold the load under the target, n - 1 would not
        assert (n - 1) * target < in_flight <= n * target


@given(target=st.integers(min_value=1, max_value=512), hi=st.integers(min_value=1, max_value=64),
       a=st.integers(min_value=0, max_value=50_000), b=st.integers(min_value=0, max_value=50_000))
def test_replicas_needed_is_monotonic(target: int, hi: int, a: int, b: int) -> None:
    lo_load, hi_load = sorted((a, b))
    assert replicas_needed(lo_load, target, 0, hi) <= replicas_needed(hi_load, target, 0, hi)


def test_replicas_needed_examples() -> None:
    assert replicas_needed(0, 30, 0, 8) == 0
    assert replicas_needed(1, 30, 0, 8) == 1
    assert replicas_needed(30, 30, 0, 8) == 1
    assert replicas_needed(31, 30, 0, 8) == 2
    assert replicas_needed(10_000, 30, 0, 8) == 8
    assert replicas_needed(0, 30, 1, 8) == 1
