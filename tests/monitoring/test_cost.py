"""Cost arithmetic and the price table shipped in the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from warmstart.errors import ConfigError
from warmstart.monitoring.cost import PRICES_PATH, PriceTable, cost_per_million_tokens, estimate
from warmstart.spec import list_variants

TABLE = PriceTable.parse({
    "as_of": "2025-06-30",
    "source": "test table",
    "regions": {"us-east-1": {"g6.xlarge": 0.8, "c7g.large": 0.07, "alb": 0.02}},
})


def test_cost_per_million_tokens() -> None:
    # $3.60/h at 1,000 tokens/s = 3.6 M tokens/h -> $1 per million.
    assert cost_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)
    assert cost_per_million_tokens(0.8048, 250.0) == pytest.approx(0.8048 / 0.9)
    assert cost_per_million_tokens(5.0, 0.0) is None
    assert cost_per_million_tokens(5.0, None) is None
    with pytest.raises(ValueError):
        cost_per_million_tokens(-1.0, 10.0)


def test_estimate_adds_replicas_gate_and_alb() -> None:
    c = estimate(TABLE, region="us-east-1", replica_instance_type="g6.xlarge", replicas=3,
                 gate_instance_type="c7g.large", gate_instances=2, tokens_per_s=500.0)
    assert c.replica_usd_per_hour == pytest.approx(2.4)
    assert c.gate_usd_per_hour == pytest.approx(0.14)
    assert c.fixed_usd_per_hour == pytest.approx(0.02)
    assert c.usd_per_hour == pytest.approx(2.56)
    assert c.usd_per_million_tokens == pytest.approx(2.56 / (500 * 3600) * 1e6)
    assert c.prices_as_of == "2025-06-30"


def test_scaled_to_zero_costs_only_the_edge_and_has_no_token_price() -> None:
    c = estimate(TABLE, region="us-east-1", replica_instance_type="g6.xlarge", replicas=0,
                 gate_instance_type="c7g.large", gate_instances=1, tokens_per_s=0.0)
    assert c.usd_per_hour == pytest.approx(0.09)
    assert c.usd_per_million_tokens is None


def test_unknown_region_or_type_names_the_value_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"region='eu-north-9'.*use one of us-east-1"):
        TABLE.price("g6.xlarge", "eu-north-9")
    with pytest.raises(ConfigError, match=r"'p9.huge'.*add its on-demand price"):
        TABLE.price("p9.huge", "us-east-1")


@pytest.mark.parametrize("data, match", [
    ({"source": "x", "regions": {}}, "'as_of' is missing"),
    ({"as_of": "2025-01-01", "regions": {}}, "'source' is missing"),
    ({"as_of": "2025-01-01", "source": "x", "regions": {"us-east-1": {"g6.xlarge": "cheap"}}}, "not a non-negative"),
    ({"as_of": "2025-01-01", "source": "x", "regions": {"us-east-1": {"g6.xlarge": -1}}}, "not a non-negative"),
    ({"as_of": "2025-01-01", "source": "x", "regions": ["us-east-1"]}, "expected a mapping"),
    ("just text", "expected a mapping"),
])
def test_bad_tables_are_rejected(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PriceTable.parse(data)


def test_the_shipped_table_names_its_date_and_source_and_prices_every_variant() -> None:
    table = PriceTable.load()
    assert table.as_of and "aws.amazon.com" in table.source
    assert "us-east-1" in table.regions
    for region, prices in table.regions.items():
        assert "alb" in prices, region
        for v in list_variants():
            for t in (v.gpu.instance_type, *v.gpu.fallback_instance_types):
                if t != "cpu":
                    assert prices.get(t, 0) > 0, f"{t} unpriced in {region}"
        # the edge's default gate instance type
        assert prices["c7g.large"] > 0
    # GPU hours cost more than the gate instance; a transposed digit would usually break this.
    assert table.price("g6.xlarge", "us-east-1") > 10 * table.price("c7g.large", "us-east-1")


def test_unreadable_table_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text("regions: [\n")
    with pytest.raises(ConfigError, match="cannot read"):
        PriceTable.load(bad)
    assert yaml.safe_load(PRICES_PATH.read_text())["currency"] == "USD"
