"""The configuration reference (docs/configuration.md), generated from the spec (never hand-copied).

    python -m warmstart.docs           # print the reference
    python -m warmstart.docs --write   # replace docs/configuration.md's `config` section with it

tests/stacks/test_program.py fails when that section and this output differ.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from warmstart.spec import (
    EndpointConfig,
    EngineArgs,
    ExistingNetwork,
    GpuSpec,
    PlanLimits,
    SpeculativeConfig,
    Variant,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
SECTION = "config"


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping (below)"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(empty)"
    if field.default is None:
        return "—"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    if isinstance(field.default, tuple):
        return "`[]`" if not field.default else f"`{list(field.default)}`"
    return f"`{field.default}`"


def _table(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type(field.annotation)} | {_default(field)} | {desc} |")
    return rows


def config_reference() -> str:
    from stacks.config import STACK_KEYS

    out = [
        "# Configuration reference",
        "",
        "Generated from `warmstart/spec.py` and `stacks/config.py` by `python -m warmstart.docs --write`;",
        "a test fails when this section and the code disagree.",
        "",
        "## Stack keys (`stacks/Pulumi.<env>.yaml`, under `config:`)",
        "",
        "| key | meaning |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in STACK_KEYS.items()],
        "",
        "## Endpoint keys (each entry of `warmstart:endpoints`)",
        "",
        *_table(EndpointConfig),
        "",
        "`network` (adopt an existing VPC instead of creating one):",
        "",
        *_table(ExistingNetwork, "network."),
        "",
        "`plan_limits` (plan enterprise only):",
        "",
        *_table(PlanLimits, "plan_limits."),
        "",
        "## Variant keys (`variants/<name>.yaml`)",
        "",
        *_table(Variant),
        "",
        *_table(GpuSpec, "gpu."),
        "",
        *_table(EngineArgs, "engine."),
        "",
        *_table(SpeculativeConfig, "engine.speculative_config."),
    ]
    return "\n".join(out) + "\n"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- section:{name} -->\n)(.*?)(<!-- /section:{name} -->)", re.S)


def readme_section(text: str, name: str = SECTION) -> str:
    m = _pattern(name).search(text)
    if m is None:
        raise ValueError(f"{DOC.name} has no <!-- section:{name} --> ... <!-- /section:{name} --> markers")
    return m.group(2)


def replace_section(text: str, body: str, name: str = SECTION) -> str:
    if not _pattern(name).search(text):
        raise ValueError(f"{DOC.name} has no <!-- section:{name} --> markers")
    return _pattern(name).sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help="update docs/configuration.md's config section in place")
    args = parser.parse_args(argv)
    body = config_reference()
    if args.write:
        DOC.write_text(replace_section(DOC.read_text(), body))
    else:
        print(body, end="")


if __name__ == "__main__":
    main()
