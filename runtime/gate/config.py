"""The gate's configuration: one typed object, read from a YAML/JSON file or built in code.

The same object is rendered by the Edge component into SSM Parameter Store (AWS), written by
`warmstart local up` (local) and built from flags by `warmstart gate --upstream ...`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from warmstart.errors import ConfigError
from warmstart.spec import PLANS, get_plan


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(_Cfg):
    kind: Literal["static", "local", "aws", "k8s"] = Field(description="which replica pool backend")
    upstreams: tuple[str, ...] = Field(default=(), description="static: vLLM base URLs (http://host:port)")
    variant: str | None = Field(default=None, description="local/aws: the variant served")
    asg_name: str | None = Field(default=None, description="aws: the replica ASG")
    region: str | None = Field(default=None, description="aws: region (default: the environment's)")
    namespace: str | None = Field(default=None, description="k8s: namespace of the vLLM Deployment")
    deployment: str | None = Field(default=None, description="k8s: the vLLM Deployment (scale subresource)")
    service: str | None = Field(default=None, description="k8s: Service whose EndpointSlices list replicas")
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    idle_timeout_s: float = Field(default=300, gt=0, description="flex: idle seconds before zero")

    @model_validator(mode="after")
    def _backend_needs(self) -> PoolConfig:
        if self.kind == "static" and not self.upstreams:
            raise ValueError("pool.kind='static' needs at least one upstream; pass --upstream http://HOST:PORT")
        for url in self.upstreams:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream={url!r} is not an http(s) URL; use http://HOST:PORT")
        if self.kind == "aws" and not self.asg_name:
            raise ValueError("pool.kind='aws' needs asg_name; set the replica ASG's name")
        if self.kind == "k8s" and not (self.namespace and self.deployment):
            raise ValueError("pool.kind='k8s' needs namespace and deployment; name the vLLM Deployment")
        if self.kind == "local" and not self.variant:
            raise ValueError("pool.kind='local' needs variant; name one under variants/")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"pool.min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}; lower it"
            )
        return self


class GateConfig(_Cfg):
    endpoint: str = Field(description="endpoint id; keys must be scoped to it")
    plan: str = Field(default="pro", description="plan whose budgets apply")
    plan_max_concurrency: int | None = Field(default=None, ge=1, description="enterprise override")
    served_name: str = Field(description="model name the replicas serve; 'default' aliases it")
    replica_cap: int = Field(default=30, ge=1, le=1024, description="in-flight requests per replica")
    store: str = Field(default="memory", description="admission store: 'memory' or redis://...")
    keys: str = Field(default="sqlite:.warmstart/keys.db", description="sqlite:PATH or dynamodb:TABLE")
    pool: PoolConfig
    hold_timeout_s: float = Field(default=120, ge=0, le=900, description="wait for capacity before 503")
    request_timeout_s: float = Field(default=600, gt=0, le=3600, description="non-streamed bound → 504")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="413 above this")
    max_tokens_limit: int = Field(default=131072, ge=1, description="400 above this max_tokens")
    lease_ttl_s: float = Field(default=30, ge=1, le=600, description="lease expiry unless renewed")
    keepalive_interval_s: float = Field(default=10, gt=0, le=15, description="SSE ': keep-alive' period")
    key_cache_ttl_s: float = Field(default=5, ge=0, le=60, description="revocation takes effect within this")
    stopped: bool = Field(default=False, description="endpoint stopped: 503 without waking")
    body_timeout_s: float = Field(default=30, gt=0, le=600, description="slow request bodies → 408")

    @model_validator(mode="after")
    def _plan(self) -> GateConfig:
        if self.plan not in PLANS:
            raise ValueError(f"plan={self.plan!r} is not a plan; use one of {', '.join(PLANS)}")
        if not (self.store == "memory" or self.store.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError(f"store={self.store!r} is not supported; use 'memory' or redis://HOST:PORT/DB")
        if not self.keys.startswith(("sqlite:", "dynamodb:")):
            raise ValueError(f"keys={self.keys!r} is not a key store; use sqlite:PATH or dynamodb:TABLE")
        return self

    @property
    def max_concurrency(self) -> int:
        return self.plan_max_concurrency or get_plan(self.plan).max_concurrency

    def concurrency_budget(self, ready_replicas: int) -> int:
        return min(ready_replicas * self.replica_cap, self.max_concurrency)

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "gate config") -> GateConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            msgs = []
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msgs.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
            raise ConfigError(f"{source}: " + "; ".join(msgs)) from None

    @classmethod
    def load(cls, path: str | Path) -> GateConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"gate config {p}: cannot read ({e.strerror}); check the path") from None
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"gate config {p}: not valid JSON/YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"gate config {p}: expected a mapping")
        return cls.parse(data, source=f"gate config {p}")
