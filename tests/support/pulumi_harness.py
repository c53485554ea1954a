"""Pulumi under mocks for tests: the real pulumi-aws classes, no cloud, no CLI.

`pulumi_record(program, config=...)` runs `program` in a fresh contextvars context with a fresh
event loop and `set_mocks(preview=False)`, records every resource (inputs + options) through a
MockMonitor subclass, and resets Pulumi's settings afterwards (FACTS.md: set_mocks is
process-wide; never call it at module level). `stack_graph("prod")` renders a real stack file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pulumi
import pytest

from stacks import config as stack_config
from stacks import program
from stacks.preview import AwsMocks, Graph, record, render_stack

Recorder = Callable[..., Graph]


@pytest.fixture
def pulumi_record() -> Iterator[Recorder]:
    def run(program: Callable[[], None], *, config: dict[str, Any] | None = None,
            mocks: AwsMocks | None = None, stack: str = "test") -> Graph:
        return record(program, config=config or {"aws:region": "us-east-1"}, mocks=mocks, stack=stack)

    yield run
    # record() resets in its own context; this guards against a test calling set_mocks itself.
    pulumi.runtime.settings.reset_options()


_STACKS: dict[str, Graph] = {}


def stack_graph(stack: str) -> Graph:
    """The rendered graph of stacks/Pulumi.<stack>.yaml (cached: the program is deterministic)."""
    if stack not in _STACKS:
        _STACKS[stack] = render_stack(stack)
    return _STACKS[stack]


@pytest.fixture(params=["dev", "staging", "prod"])
def env_graph(request: pytest.FixtureRequest) -> Graph:
    """Each environment's rendered graph, one test per environment."""
    return stack_graph(str(request.param))


def stack_values(stack: str) -> dict[str, Any]:
    """A copy of stacks/Pulumi.<stack>.yaml's config, to vary in a test."""
    values = stack_config.read_stack_file(stack)
    values["warmstart:endpoints"] = [dict(e) for e in values["warmstart:endpoints"]]
    return values


def with_endpoint(stack: str, **changes: Any) -> dict[str, Any]:
    """The stack's config with its (first) endpoint changed; a None value removes the key."""
    values = stack_values(stack)
    ep = values["warmstart:endpoints"][0]
    for k, v in changes.items():
        if v is None:
            ep.pop(k, None)
        else:
            ep[k] = v
    return values


def render_values(values: dict[str, Any], mocks: AwsMocks | None = None) -> Graph:
    """The real program (pulumi.Config path) with these config values."""
    return record(program.main, config=values, stack=str(values.get("warmstart:environment", "test")),
                  mocks=mocks or AwsMocks(str(values.get("aws:region", "us-east-1"))))
