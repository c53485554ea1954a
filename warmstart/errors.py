"""warmstart's exceptions, in one place.

    WarmstartError              base: callers catch this one class
    ├── ConfigError             a spec, stack config or variant file is wrong; the message names
    │                           the bad value and the fix, and the CLI prints it as one line (exit 2)
    ├── VariantNotFound         no variants/<name>.yaml
    └── OperationError          a day-two operation cannot proceed (missing snapshot, no stack, ...)

The gate's HTTP errors (OpenAI-shaped bodies) live in runtime/gate/errors.py: they are a wire
format, not Python control flow, and runtime/ must not need this package's CLI parts.
"""

from __future__ import annotations


class WarmstartError(Exception):
    """Base class of every error warmstart raises on purpose."""


class ConfigError(WarmstartError, ValueError):
    """A configuration value is invalid. The message shows the value and how to fix it."""


class VariantNotFound(ConfigError):
    """The named variant has no YAML file in the variants directory."""


class OperationError(WarmstartError):
    """A command was understood but cannot be carried out as asked."""
