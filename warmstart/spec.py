"""The typed spec: plans, variants, engine settings and endpoint configuration.

Everything the rest of warmstart decides is derived from these value objects, so they reject bad
values and bad combinations when they are built, before any resource is declared or any process
started. Every error names the value and the fix (AWS CDK's rule), e.g.

    max_replicas=12 exceeds plan pro (8); raise the plan or lower max_replicas

Only the standard library, pydantic and PyYAML are imported here: runtime/ (which runs on the
machines) and components/ (which declares them) both depend on this module.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from warmstart.errors import ConfigError, VariantNotFound

__all__ = [
    "PLANS",
    "GPU_INSTANCES",
    "Plan",
    "GpuInstance",
    "SpeculativeConfig",
    "EngineArgs",
    "Variant",
    "EndpointConfig",
    "replicas_needed",
    "load_variant",
    "list_variants",
    "variants_dir",
    "parse_endpoint",
    "parse_variant",
    "ConfigError",
]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{kind}={value!r} is not a valid name; use 1-40 lowercase letters, digits and '-' "
            "(it becomes part of AWS resource names)"
        )
    return value


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Plans


class Plan(_Value):
    """A billing plan: what an endpoint on it may use. Numbers are the product contract."""

    name: str
    can_deploy: bool = Field(description="starter is playground-only and cannot deploy an endpoint")
    max_replicas: int = Field(ge=0, description="replicas across the endpoint")
    max_concurrency: int = Field(ge=0, description="in-flight requests across the endpoint")
    allows_active: bool = Field(description="Active mode (never scale to zero) is team and up")
    playground_daily_requests: int | None = Field(
        default=None, ge=1, description="daily cap of playground-kind keys; None = uncapped"
    )

    def concurrency_budget(self, replicas: int, per_replica_cap: int) -> int:
        """The admission budget: replicas x per-replica cap, never above the plan's cap."""
        return min(max(replicas, 0) * per_replica_cap, self.max_concurrency)


PLANS: dict[str, Plan] = {
    "starter": Plan(
        name="starter", can_deploy=False, max_replicas=0, max_concurrency=0,
        allows_active=False, playground_daily_requests=100,
    ),
    "pro": Plan(name="pro", can_deploy=True, max_replicas=8, max_concurrency=240, allows_active=False),
    "team": Plan(name="team", can_deploy=True, max_replicas=32, max_concurrency=960, allows_active=True),
    # "enterprise: custom": the defaults are generous; an endpoint may override them (plan_limits).
    "enterprise": Plan(
        name="enterprise", can_deploy=True, max_replicas=256, max_concurrency=7680, allows_active=True
    ),
}


def get_plan(name: str) -> Plan:
    try:
        return PLANS[name]
    except KeyError:
        raise ConfigError(
            f"plan={name!r} is not a plan; use one of {', '.join(PLANS)}"
        ) from None


def replicas_needed(in_flight: int, target_per_replica: int, min_replicas: int, max_replicas: int) -> int:
    """The scale-out rule: ceil(in_flight / target), clamped to [min, max]."""
    if target_per_replica < 1:
        raise ValueError(f"target_per_replica={target_per_replica} must be >= 1")
    needed = math.ceil(max(in_flight, 0) / target_per_replica)
    return max(min_replicas, min(max_replicas, needed))


# ---------------------------------------------------------------------------------------------
# GPUs


class GpuInstance(_Value):
    instance_type: str
    gpu: str
    gpu_count: int
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int


def _gpu(t: str, gpu: str, n: int, mem: int, vcpus: int, ram: int) -> tuple[str, GpuInstance]:
    return t, GpuInstance(
        instance_type=t, gpu=gpu, gpu_count=n, gpu_memory_gib=mem, vcpus=vcpus, memory_gib=ram
    )


# GPU instance types warmstart knows how to size (AWS instance type pages). "cpu" is the local,
# GPU-less replica: the same code path with different data.
GPU_INSTANCES: dict[str, GpuInstance] = dict(
    [
        _gpu("g5.xlarge", "A10G", 1, 24, 4, 16),
        _gpu("g5.2xlarge", "A10G", 1, 24, 8, 32),
        _gpu("g5.12xlarge", "A10G", 4, 96, 48, 192),
        _gpu("g5.48xlarge", "A10G", 8, 192, 192, 768),
        _gpu("g6.xlarge", "L4", 1, 24, 4, 16),
        _gpu("g6.2xlarge", "L4", 1, 24, 8, 32),
        _gpu("g6.12xlarge", "L4", 4, 96, 48, 192),
        _gpu("g6e.xlarge", "L40S", 1, 48, 4, 32),
        _gpu("g6e.2xlarge", "L40S", 1, 48, 8, 64),
        _gpu("g6e.12xlarge", "L40S", 4, 192, 48, 384),
        _gpu("p4d.24xlarge", "A100", 8, 320, 96, 1152),
        _gpu("p5.48xlarge", "H100", 8, 640, 192, 2048),
        _gpu("p5e.48xlarge", "H200", 8, 1128, 192, 2048),
        _gpu("cpu", "none", 0, 0, 0, 0),
    ]
)


def get_gpu(instance_type: str) -> GpuInstance:
    try:
        return GPU_INSTANCES[instance_type]
    except KeyError:
        known = ", ".join(t for t in GPU_INSTANCES if t != "cpu")
        raise ConfigError(
            f"gpu.instance_type={instance_type!r} is not a supported GPU instance type; use one of {known}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Engine


class SpeculativeConfig(_Value):
    """vLLM's --speculative-config, as vLLM expects it (serialized to JSON by the launcher)."""

    method: Literal["ngram", "draft_model", "eagle", "eagle3", "medusa", "mtp"] = Field(
        description="speculation method"
    )
    num_speculative_tokens: int = Field(ge=1, le=16, description="tokens proposed per step")
    model: str | None = Field(default=None, description="draft / EAGLE head model directory or id")
    prompt_lookup_max: int | None = Field(default=None, ge=1, description="ngram: longest n-gram")
    prompt_lookup_min: int | None = Field(default=None, ge=1, description="ngram: shortest n-gram")

    @model_validator(mode="after")
    def _method_needs(self) -> SpeculativeConfig:
        if self.method == "ngram":
            if self.model is not None:
                raise ValueError(
                    f"speculative_config.model={self.model!r} is not used by method 'ngram'; remove it"
                )
            if self.prompt_lookup_max is None:
                raise ValueError(
                    "speculative_config.prompt_lookup_max is required for method 'ngram'; "
                    "set it (4 is a good start)"
                )
            lo = self.prompt_lookup_min or 1
            if lo > self.prompt_lookup_max:
                raise ValueError(
                    f"speculative_config.prompt_lookup_min={lo} exceeds prompt_lookup_max="
                    f"{self.prompt_lookup_max}; lower min or raise max"
                )
        elif self.method in ("draft_model", "eagle", "eagle3", "medusa") and not self.model:
            raise ValueError(
                f"speculative_config.model is required for method {self.method!r}; "
                "name the draft/EAGLE model directory"
            )
        return self

    def to_vllm(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class EngineArgs(_Value):
    """vLLM engine settings of a variant. Only what warmstart understands; `extra_args` passes the rest."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="weights/activation dtype"
    )
    max_model_len: int | None = Field(default=None, ge=16, description="context length cap")
    tensor_parallel_size: int = Field(default=1, ge=1, le=8, description="GPUs per replica")
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"] | None = Field(
        default=None, description="quantization method of the weights"
    )
    speculative_config: SpeculativeConfig | None = Field(default=None, description="speculative decoding")
    gpu_memory_utilization: float = Field(default=0.90, gt=0.0, le=0.98, description="GPU memory share")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096, description="vLLM batch cap")
    enforce_eager: bool = Field(default=False, description="skip CUDA graphs / torch.compile")
    enable_prefix_caching: bool = Field(default=True, description="reuse KV cache across prompts")
    enable_sleep_mode: bool = Field(
        default=True, description="GPU only: keep a woken-from-sleep path (ignored on the CPU)"
    )
    extra_args: tuple[str, ...] = Field(default=(), description="more vLLM CLI flags, verbatim")

    @field_validator("tensor_parallel_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"tensor_parallel_size={v} must be a power of two (1, 2, 4 or 8)")
        return v

    @field_validator("extra_args")
    @classmethod
    def _no_reserved(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        reserved = {"--model", "--host", "--port", "--served-model-name"}
        for arg in v:
            if arg.split("=", 1)[0] in reserved:
                raise ValueError(
                    f"extra_args contains {arg!r}; warmstart sets {arg.split('=', 1)[0]} itself, remove it"
                )
        return v


# ---------------------------------------------------------------------------------------------
# Variants


class GpuSpec(_Value):
    instance_type: str = Field(description="EC2 instance type of a replica ('cpu' for local)")
    fallback_instance_types: tuple[str, ...] = Field(
        default=(), description="tried in order on InsufficientInstanceCapacity"
    )

    @field_validator("instance_type")
    @classmethod
    def _known(cls, v: str) -> str:
        get_gpu(v)
        return v

    @field_validator("fallback_instance_types")
    @classmethod
    def _known_fallbacks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for t in v:
            get_gpu(t)
        return v

    @property
    def info(self) -> GpuInstance:
        return GPU_INSTANCES[self.instance_type]


class Variant(_Value):
    """One optimized way to serve a model: weights + engine settings + the GPU it was tuned on."""

    name: str = Field(description="variant id (file name under variants/)")
    model: str = Field(
        description="weights source: 'bundled:smollm2-135m', a local folder, 's3://bucket/prefix' or 'hf:org/name'"
    )
    served_name: str = Field(description="model name vLLM serves (the gate also answers to 'default')")
    engine: EngineArgs = Field(default_factory=EngineArgs, description="vLLM engine settings")
    gpu: GpuSpec = Field(description="instance type and fallbacks")
    weights_snapshot_id: str | None = Field(
        default=None, description="EBS snapshot holding the weight cache (snap-...); None for local variants"
    )
    weights_size_gib: int = Field(default=50, ge=1, le=16384, description="size of the weights volume")
    target_concurrency: int = Field(default=30, ge=1, le=1024, description="in-flight requests per replica")
    created: date | None = Field(default=None, description="when the variant was built")
    tuned_on: str | None = Field(default=None, description="instance type the variant was benchmarked on")
    benchmark: dict[str, float] = Field(default_factory=dict, description="measured figures")
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name("variant", v)

    @field_validator("weights_snapshot_id")
    @classmethod
    def _snap(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^snap-[0-9a-f]{8,17}$", v):
            raise ValueError(f"weights_snapshot_id={v!r} is not an EBS snapshot id; expected snap-<hex>")
        return v

    @model_validator(mode="after")
    def _fits_gpu(self) -> Variant:
        info = self.gpu.info
        tp = self.engine.tensor_parallel_size
        if info.gpu_count == 0:
            if tp != 1:
                raise ValueError(
                    f"engine.tensor_parallel_size={tp} needs GPUs but gpu.instance_type='cpu'; set it to 1"
                )
        elif tp > info.gpu_count:
            raise ValueError(
                f"engine.tensor_parallel_size={tp} exceeds the {info.gpu_count} GPU(s) of "
                f"{info.instance_type}; pick a larger instance type or lower tensor_parallel_size"
            )
        for fb in self.gpu.fallback_instance_types:
            n = GPU_INSTANCES[fb].gpu_count
            if info.gpu_count and n < tp:
                raise ValueError(
                    f"gpu.fallback_instance_types contains {fb!r} with {n} GPU(s), fewer than "
                    f"tensor_parallel_size={tp}; remove it or pick a larger type"
                )
        return self

    @property
    def on_gpu(self) -> bool:
        return self.gpu.info.gpu_count > 0


# ---------------------------------------------------------------------------------------------
# Endpoints


class PlanLimits(_Value):
    max_replicas: int = Field(ge=1, description="replicas across the endpoint (replaces the plan's)")
    max_concurrency: int = Field(ge=1, description="in-flight requests across the endpoint (replaces the plan's)")


class ExistingNetwork(_Value):
    vpc_id: str = Field(description="adopt this VPC instead of creating one")
    public_subnet_ids: tuple[str, ...] = Field(description="subnets for the ALB (>= 2 AZs)")
    private_subnet_ids: tuple[str, ...] = Field(description="subnets for gate and replicas (>= 2 AZs)")

    @model_validator(mode="after")
    def _two_azs(self) -> ExistingNetwork:
        for label, ids in (("public_subnet_ids", self.public_subnet_ids), ("private_subnet_ids", self.private_subnet_ids)):
            if len(ids) < 2:
                raise ValueError(
                    f"network.{label} has {len(ids)} subnet(s); give at least 2 in different AZs"
                )
        return self


class EndpointConfig(_Value):
    """One endpoint of a stack: which variant, on which plan, how it scales."""

    name: str = Field(description="endpoint id; scopes its API keys and names its resources")
    environment: str = Field(default="dev", description="dev | staging | prod (or any name)")
    plan: str = Field(default="pro", description="starter | pro | team | enterprise")
    plan_limits: PlanLimits | None = Field(default=None, description="enterprise only: custom budgets")
    variant: str = Field(description="variant name under variants/")
    mode: Literal["flex", "active"] = Field(
        default="flex", description="flex scales to zero when idle; active keeps min_replicas"
    )
    min_replicas: int = Field(default=0, ge=0, description="floor (0 for flex)")
    max_replicas: int = Field(default=2, ge=1, description="ceiling, at most the plan's")
    idle_timeout_s: int = Field(default=300, ge=1, le=86400, description="flex: idle seconds before zero")
    replica_cap: int | None = Field(
        default=None, ge=1, le=1024, description="in-flight per replica; default the variant's (30)"
    )
    request_timeout_s: int = Field(default=600, ge=10, le=3600, description="non-streamed request bound (504)")
    hold_timeout_s: int = Field(
        default=120, ge=0, le=900, description="how long a request waits for capacity before 503"
    )
    domain: str | None = Field(default=None, description="HTTPS on this name (ACM certificate)")
    hosted_zone_id: str | None = Field(default=None, description="Route 53 zone for DNS validation")
    allow_http: bool = Field(default=False, description="serve plain HTTP when no domain is set")
    gate_instance_type: str = Field(default="c7i.large", description="gate tier instance type")
    gate_instances: int = Field(default=1, ge=1, le=20, description="gate tier size (>= 2 in prod)")
    warm_pool_size: int = Field(default=0, ge=0, le=64, description="stopped, pre-warmed replicas")
    fast_snapshot_restore: bool = Field(default=False, description="enable FSR in each AZ")
    volume_initialization_rate: int | None = Field(
        default=None, ge=100, le=300, description="MiB/s EBS volume initialization rate"
    )
    network: ExistingNetwork | None = Field(default=None, description="adopt an existing VPC")
    alarm_email: str | None = Field(default=None, description="SNS email for alarms")
    stopped: bool = Field(
        default=False, description="stopped by `warmstart endpoint stop`: no replicas, the gate answers 503"
    )
    gpu_instance_type: str | None = Field(
        default=None, description="set by `endpoint change-gpu`: overrides the variant's instance type"
    )
    image_uri: str | None = Field(
        default=None, description="runtime image (ECR URI) for this endpoint; default: the stack's warmstart:imageUri"
    )
    log_retention_days: int = Field(default=30, description="CloudWatch log retention")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name("endpoint", v)

    @field_validator("plan")
    @classmethod
    def _plan(cls, v: str) -> str:
        get_plan(v)
        return v

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, v: int) -> int:
        allowed = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653)
        if v not in allowed:
            raise ValueError(f"log_retention_days={v} is not a CloudWatch retention; use one of {allowed}")
        return v

    @field_validator("gpu_instance_type")
    @classmethod
    def _gpu_override(cls, v: str | None) -> str | None:
        if v is not None:
            get_gpu(v)
        return v

    @model_validator(mode="after")
    def _combinations(self) -> EndpointConfig:
        plan = self.plan_obj
        if not plan.can_deploy:
            raise ValueError(
                f"plan={self.plan!r} cannot deploy an endpoint (playground only); use plan pro or higher"
            )
        if self.plan_limits is not None and self.plan != "enterprise":
            raise ValueError(
                f"plan_limits is only for plan enterprise, got plan={self.plan!r}; remove plan_limits"
            )
        if self.max_replicas > plan.max_replicas:
            raise ValueError(
                f"max_replicas={self.max_replicas} exceeds plan {self.plan} ({plan.max_replicas}); "
                "raise the plan or lower max_replicas"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}; "
                "lower min_replicas or raise max_replicas"
            )
        if self.mode == "active":
            if not plan.allows_active:
                raise ValueError(
                    f"mode='active' needs plan team or higher, got plan={self.plan!r}; "
                    "use mode flex or raise the plan"
                )
            if self.min_replicas < 1:
                raise ValueError(
                    f"mode='active' keeps replicas up but min_replicas={self.min_replicas}; "
                    "set min_replicas >= 1 or use mode flex"
                )
        elif self.min_replicas != 0:
            raise ValueError(
                f"mode='flex' scales to zero but min_replicas={self.min_replicas}; "
                "set min_replicas 0 or use mode active (plan team or higher)"
            )
        if self.domain is None and not self.allow_http:
            raise ValueError(
                "no domain is set and allow_http is false; set domain (HTTPS) or allow_http: true"
            )
        if self.environment == "prod" and self.gate_instances < 2:
            raise ValueError(
                f"gate_instances={self.gate_instances} in prod; prod needs >= 2 gates across AZs"
            )
        if self.warm_pool_size > self.max_replicas:
            raise ValueError(
                f"warm_pool_size={self.warm_pool_size} exceeds max_replicas={self.max_replicas}; "
                "a warm pool larger than the group can never be used, lower it"
            )
        return self

    @property
    def plan_obj(self) -> Plan:
        base = get_plan(self.plan)
        if self.plan_limits is None:
            return base
        return base.model_copy(
            update={
                "max_replicas": self.plan_limits.max_replicas,
                "max_concurrency": self.plan_limits.max_concurrency,
            }
        )

    def instance_type_for(self, variant: Variant) -> str:
        return self.gpu_instance_type or variant.gpu.instance_type

    def cap_for(self, variant: Variant) -> int:
        return self.replica_cap or variant.target_concurrency


# ---------------------------------------------------------------------------------------------
# Loading


def _one_line(kind: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"{loc} is not a known setting; remove it or check its spelling"
        elif e["type"] == "missing":
            msg = f"{loc} is required; set it"
        elif loc and loc.split(".")[-1] not in msg.split(" ")[0]:
            got = e.get("input")
            msg = f"{loc}={got!r}: {msg}" if not isinstance(got, Mapping) else f"{loc}: {msg}"
        parts.append(msg)
    return f"{kind}: " + "; ".join(parts)


def parse_endpoint(data: Mapping[str, Any]) -> EndpointConfig:
    try:
        return EndpointConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_one_line(f"endpoint {data.get('name', '?')!s}", e)) from None


def parse_variant(data: Mapping[str, Any]) -> Variant:
    try:
        return Variant.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_one_line(f"variant {data.get('name', '?')!s}", e)) from None


def variants_dir() -> Path:
    """variants/ beside the packages, or $WARMSTART_VARIANTS_DIR."""
    env = os.environ.get("WARMSTART_VARIANTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "variants"


def load_variant(name: str, root: Path | None = None) -> Variant:
    root = root or variants_dir()
    path = root / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in root.glob("*.yaml"))) or "none"
        raise VariantNotFound(
            f"variant={name!r} has no file {path}; use one of: {known} (or add {path.name})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of variant settings, got {type(data).__name__}")
    data.setdefault("name", name)
    if data["name"] != name:
        raise ConfigError(f"{path}: name={data['name']!r} differs from the file name; rename one")
    return parse_variant(data)


def list_variants(root: Path | None = None) -> list[Variant]:
    root = root or variants_dir()
    return [load_variant(p.stem, root) for p in sorted(root.glob("*.yaml"))]
