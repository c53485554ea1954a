"""Estimated cost of an endpoint: per hour from the on-demand price table, per million tokens from
the measured throughput.

The price table (prices.yaml beside this module) is kept by hand with the date and source of its
figures; an estimate names that date so nobody mistakes it for a bill. What is counted per hour:
every replica that is running or starting (both are billed), the gate instances, and the ALB's
hourly charge. Not counted: ALB LCUs, data transfer, EBS volumes of stopped warm-pool instances,
snapshots and Redis (small next to a GPU hour; say so rather than guess).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from warmstart.errors import ConfigError

__all__ = ["PRICES_PATH", "CostEstimate", "PriceTable", "cost_per_million_tokens", "estimate"]

PRICES_PATH = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    currency: str
    regions: dict[str, dict[str, float]]

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        p = path or PRICES_PATH
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"price table {p}: cannot read ({e}); restore it from git") from None
        return cls.parse(data, source=str(p))

    @classmethod
    def parse(cls, data: Any, source: str = "price table") -> PriceTable:
        if not isinstance(data, dict) or not isinstance(data.get("regions"), dict):
            raise ConfigError(f"{source}: expected a mapping with 'regions: {{REGION: {{TYPE: USD}}}}'")
        for key in ("as_of", "source"):
            if not data.get(key):
                raise ConfigError(f"{source}: '{key}' is missing; every price table names its date and source")
        regions: dict[str, dict[str, float]] = {}
        for region, prices in data["regions"].items():
            if not isinstance(prices, dict):
                raise ConfigError(f"{source}: region {region!r} must map instance types to USD per hour")
            table: dict[str, float] = {}
            for item, price in prices.items():
                if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                    raise ConfigError(
                        f"{source}: {region}/{item} price={price!r} is not a non-negative number of USD per hour"
                    )
                table[str(item)] = float(price)
            regions[str(region)] = table
        return cls(
            as_of=str(data["as_of"]),
            source=str(data["source"]),
            currency=str(data.get("currency", "USD")),
            regions=regions,
        )

    def price(self, item: str, region: str) -> float:
        prices = self.regions.get(region)
        if prices is None:
            raise ConfigError(
                f"region={region!r} has no prices in {PRICES_PATH.name}; add it or use one of "
                f"{', '.join(sorted(self.regions))}"
            )
        if item not in prices:
            raise ConfigError(
                f"instance type {item!r} has no {region} price in {PRICES_PATH.name}; add its on-demand "
                "price (USD/hour) from aws.amazon.com/ec2/pricing/on-demand"
            )
        return prices[item]


def cost_per_million_tokens(usd_per_hour: float, tokens_per_s: float | None) -> float | None:
    """USD per million tokens at a throughput; None when nothing was generated (the cost is unbounded)."""
    if usd_per_hour < 0:
        raise ValueError(f"usd_per_hour={usd_per_hour} must be >= 0")
    if tokens_per_s is None or tokens_per_s <= 0:
        return None
    return usd_per_hour / (tokens_per_s * 3600.0) * 1_000_000.0


@dataclass(frozen=True)
class CostEstimate:
    region: str
    replica_instance_type: str
    replicas: float
    replica_usd_per_hour: float
    gate_instance_type: str
    gate_instances: int
    gate_usd_per_hour: float
    fixed_usd_per_hour: float
    usd_per_hour: float
    tokens_per_s: float | None
    usd_per_million_tokens: float | None
    prices_as_of: str
    prices_source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    table: PriceTable,
    *,
    region: str,
    replica_instance_type: str,
    replicas: float,
    gate_instance_type: str,
    gate_instances: int,
    tokens_per_s: float | None,
    include_alb: bool = True,
) -> CostEstimate:
    """Cost per hour of the fleet as it stands now, and per million output tokens at the measured rate.

    replicas may be fractional: over a window it is the average number running.
    """
    if replicas < 0 or gate_instances < 0:
        raise ValueError(f"replicas={replicas} and gate_instances={gate_instances} must be >= 0")
    replica_hour = table.price(replica_instance_type, region) * replicas
    gate_hour = table.price(gate_instance_type, region) * gate_instances
    fixed = table.price("alb", region) if include_alb else 0.0
    total = replica_hour + gate_hour + fixed
    return CostEstimate(
        region=region,
        replica_instance_type=replica_instance_type,
        replicas=replicas,
        replica_usd_per_hour=replica_hour,
        gate_instance_type=gate_instance_type,
        gate_instances=gate_instances,
        gate_usd_per_hour=gate_hour,
        fixed_usd_per_hour=fixed,
        usd_per_hour=total,
        tokens_per_s=tokens_per_s,
        usd_per_million_tokens=cost_per_million_tokens(total, tokens_per_s),
        prices_as_of=table.as_of,
        prices_source=table.source,
    )
