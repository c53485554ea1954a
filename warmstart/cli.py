"""The `warmstart` command line.

Subcommands live in warmstart/commands/<name>.py and are imported only when used, so
`warmstart keys list` never pays for importing Pulumi or vLLM. A user error (WarmstartError) is
printed as one line naming the bad value and the fix, with exit code 2 and no traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from warmstart import __version__
from warmstart.errors import WarmstartError

# name -> (module, attribute, one-line help shown by `warmstart --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "preview": ("warmstart.commands.preview", "preview", "Render a stack's resource graph offline."),
    "local": ("warmstart.commands.local", "local", "Run the endpoint on this machine (real vLLM on the CPU)."),
    "gate": ("warmstart.commands.gate", "gate", "Run the gate in front of existing vLLM servers."),
    "keys": ("warmstart.commands.keys", "keys", "Create, list, revoke and rotate API keys."),
    "endpoint": ("warmstart.commands.endpoint", "endpoint", "Status, logs, stop, start, change GPU, metrics."),
    "variants": ("warmstart.commands.variants", "variants", "List and show model variants."),
    "rollback": ("warmstart.commands.rollback", "rollback", "Roll a stack back to a prior variant."),
    "weights": ("warmstart.commands.weights", "weights", "Build and verify a variant's weight cache."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, attr, _ = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                return None  # subcommand not shipped in this build
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WarmstartError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="warmstart")
def cli() -> None:
    """warmstart: an optimized LLM variant as a live OpenAI-compatible endpoint on your own cloud."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="warmstart")
