"""Read and write a stack's endpoints in stacks/Pulumi.<env>.yaml, keeping the file's comments.

Day-two commands (stop, start, change-gpu, rollback) change the live fleet at once and write the
same change here, so the next `pulumi up` declares what is already running instead of undoing it.
The file is edited with ruamel.yaml's round-trip mode: comments, key order and quoting survive;
only the fields a command sets change.

Layout (written by the infrastructure program's owners):

    config:
      aws:region: us-east-1
      warmstart:environment: dev
      warmstart:endpoints:
        - name: chat
          variant: llama31-8b-fp8-l4
          ...                       # warmstart.spec.EndpointConfig fields
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from warmstart.errors import ConfigError, OperationError
from warmstart.spec import EndpointConfig, parse_endpoint

ENDPOINTS_KEY = "warmstart:endpoints"
ENVIRONMENT_KEY = "warmstart:environment"
REGION_KEY = "aws:region"


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def stacks_dir() -> Path:
    """stacks/ of this checkout, or $WARMSTART_STACKS_DIR (tests and CI use their own copies)."""
    env = os.environ.get("WARMSTART_STACKS_DIR")
    return Path(env) if env else repo_root() / "stacks"


def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments and order
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096
    return y


def known_stacks(root: Path | None = None) -> list[str]:
    root = root or stacks_dir()
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))


@dataclass
class StackFile:
    """One stack's config file, parsed round-trip."""

    name: str
    path: Path
    doc: Any

    @classmethod
    def load(cls, name: str, root: Path | None = None) -> StackFile:
        root = root or stacks_dir()
        path = root / f"Pulumi.{name}.yaml"
        if not path.is_file():
            known = ", ".join(known_stacks(root)) or "none"
            raise ConfigError(f"stack={name!r} has no file {path}; use one of: {known}")
        return cls.parse(name, path, path.read_text())

    @classmethod
    def parse(cls, name: str, path: Path, text: str) -> StackFile:
        try:
            doc = _yaml().load(text)
        except YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
        if doc is None or not isinstance(doc.get("config"), dict):
            raise ConfigError(f"{path}: has no 'config:' mapping; it is not a Pulumi stack file")
        return cls(name=name, path=path, doc=doc)

    @property
    def config(self) -> Any:
        return self.doc["config"]

    @property
    def environment(self) -> str:
        return str(self.config.get(ENVIRONMENT_KEY) or self.name)

    @property
    def region(self) -> str | None:
        value = self.config.get(REGION_KEY)
        return str(value) if value else None

    def _raw_endpoints(self) -> list[Any]:
        items = self.config.get(ENDPOINTS_KEY)
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{self.path}: {ENDPOINTS_KEY} lists no endpoints; add one")
        return items

    def _parse(self, item: Any) -> EndpointConfig:
        if not isinstance(item, dict):
            raise ConfigError(f"{self.path}: every entry of {ENDPOINTS_KEY} must be a mapping")
        data = {k: _plain(v) for k, v in item.items()}
        data.setdefault("environment", self.environment)
        return parse_endpoint(data)

    def endpoints(self) -> list[EndpointConfig]:
        return [self._parse(item) for item in self._raw_endpoints()]

    def _raw(self, name: str | None) -> Any:
        items = self._raw_endpoints()
        names = [str(i.get("name")) for i in items if isinstance(i, dict)]
        if name is None:
            if len(items) != 1:
                raise ConfigError(
                    f"stack {self.name} has {len(items)} endpoints ({', '.join(names)}); "
                    "name one with --endpoint NAME"
                )
            return items[0]
        for item in items:
            if isinstance(item, dict) and item.get("name") == name:
                return item
        raise ConfigError(
            f"endpoint={name!r} is not in stack {self.name}; use one of: {', '.join(names)}"
        )

    def endpoint(self, name: str | None = None) -> EndpointConfig:
        return self._parse(self._raw(name))

    def set_fields(self, endpoint: str | None, **fields: Any) -> EndpointConfig:
        """Set (value) or remove (None) fields of one endpoint; validated before anything is written."""
        item = self._raw(endpoint)
        before = {k: item.get(k) for k in fields}
        for key, value in fields.items():
            if value is None:
                item.pop(key, None)
            else:
                item[key] = value
        try:
            return self._parse(item)
        except ConfigError:
            for key, value in before.items():
                if value is None:
                    item.pop(key, None)
                else:
                    item[key] = value
            raise

    def dumps(self) -> str:
        buf = io.StringIO()
        _yaml().dump(self.doc, buf)
        return buf.getvalue()

    def save(self) -> None:
        tmp = self.path.with_suffix(".yaml.tmp")
        tmp.write_text(self.dumps())
        tmp.replace(self.path)


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain dicts/lists (pydantic wants the real types)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# "previous" variant: the stack file's git history is the record of what was deployed.


def _git(args: list[str], cwd: Path) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except FileNotFoundError:
        raise OperationError("git is not installed; name the variant with --to VARIANT") from None
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or "").strip().splitlines()
        raise OperationError(
            f"git history of {cwd} unavailable ({msg[0] if msg else 'git failed'}); "
            "name the variant with --to VARIANT"
        ) from None


def _history(stack: StackFile) -> Iterator[tuple[str, str]]:
    """(commit, file text) of the stack file, newest first."""
    cwd = stack.path.parent
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd).strip())
    rel = stack.path.resolve().relative_to(top.resolve()).as_posix()
    for commit in _git(["log", "--format=%H", "--", rel], top).split():
        yield commit, _git(["show", f"{commit}:{rel}"], top)


def previous_variant(stack: StackFile, endpoint: str | None = None) -> str:
    """The variant this endpoint ran before its current one, from the stack file's git history.

    Walks the commits that touched the file, newest first, and returns the first variant that
    differs from the current one (so `previous` after a rollback returns to where it came from).
    """
    current = stack.endpoint(endpoint)
    for _commit, text in _history(stack):
        try:
            old = StackFile.parse(stack.name, stack.path, text).endpoint(current.name)
        except ConfigError:
            continue  # that revision did not have this endpoint (or was broken): look further back
        if old.variant != current.variant:
            return old.variant
    raise OperationError(
        f"no earlier variant of endpoint {current.name} in the git history of {stack.path.name} "
        f"(current: {current.variant}); name one with --to VARIANT"
    )
