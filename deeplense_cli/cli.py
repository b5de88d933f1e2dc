"""The ``deeplense`` command line: parse, call an engine module, print.

Subcommands live in ``deeplense_cli.commands.*`` and are imported only when used, so
``deeplense --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from deeplense_cli import __version__
from deeplense_cli.core.errors import DeepLenseError

# name -> "module:attribute"; the order is the order in --help.
COMMANDS = {
    "data": "deeplense_cli.commands.data:data",
    "models": "deeplense_cli.commands.models:models",
    "plugins": "deeplense_cli.commands.models:plugins",
    "train": "deeplense_cli.commands.train:train",
    "evaluate": "deeplense_cli.commands.evaluate:evaluate",
    "export": "deeplense_cli.commands.export:export",
    "predict": "deeplense_cli.commands.predict:predict",
    "tune": "deeplense_cli.commands.tune:tune",
    "benchmark": "deeplense_cli.commands.benchmark:benchmark",
    "jobs": "deeplense_cli.commands.jobs:jobs",
}


class DeepLenseGroup(click.Group):
    """A group that loads subcommands lazily and turns DeepLenseError into one line."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy) + sorted(set(self.commands) - set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeepLenseError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(
    cls=DeepLenseGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="deeplense")
def cli() -> None:
    """Train, tune, evaluate and deploy classifiers of dark-matter substructure
    in strong-lensing images (DeepLense Model_I/II/III).

    Files live under DEEPLENSE_HOME (default ~/.deeplense): data/ and runs/.
    """


def _add_plugin_commands() -> None:
    # Only plugins that add commands are consulted; listing does not import torch.
    from deeplense_cli.registry.manager import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=cli)


def main() -> None:
    from deeplense_cli.core.device import configure_openmp

    configure_openmp()  # before any command imports torch
    try:
        _add_plugin_commands()
    except DeepLenseError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli(prog_name="deeplense")
