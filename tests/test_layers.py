"""The dependency direction is a contract: nothing points the other way.

    warmstart/spec.py, naming.py, errors.py   the foundation: stdlib + pydantic/yaml only
    runtime/                                  runs on machines: never pulumi, click, components, stacks, the CLI
    components/                               never stacks or the CLI
    stacks/                                   never the CLI
    everything shipped                        never tests/ (fixtures live in tests/support)

Every import is read from the source with `ast`, function-level imports included, so a lazy import
cannot slip past.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = ["warmstart/spec.py", "warmstart/naming.py", "warmstart/errors.py"]
CLI = ("click", "warmstart.cli", "warmstart.commands", "warmstart.ops", "warmstart.monitoring")

# (files, forbidden module prefixes, why)
RULES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("foundation", FOUNDATION, ("runtime", "components", "stacks", "pulumi", "pulumi_aws", "boto3", *CLI)),
    ("runtime", ["runtime"], ("pulumi", "pulumi_aws", "pulumi_kubernetes", "components", "stacks", *CLI)),
    ("components", ["components"], ("stacks", *CLI)),
    ("stacks", ["stacks"], CLI),
    ("shipped", ["warmstart", "runtime", "components", "stacks"], ("tests",)),
]


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolve inside its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.add(node.module)
    return names


def _files(roots: list[str]) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        p = ROOT / root
        out.extend([p] if p.is_file() else sorted(p.rglob("*.py")))
    return out


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize(("layer", "roots", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_layer_imports_nothing_above_it(layer: str, roots: list[str], forbidden: tuple[str, ...]) -> None:
    assert violations(_files(roots), forbidden) == []


def test_the_checker_sees_a_lazy_and_a_relative_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    pkg = tmp_path / "runtime" / "gate"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    import pulumi\n    from ..pool import aws\n")
    assert imported_modules(pkg / "x.py") == {"pulumi", "runtime.pool"}
    assert violations([pkg / "x.py"], ("pulumi",)) == ["runtime/gate/x.py imports pulumi"]
