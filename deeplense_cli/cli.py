"""The ``deeplense`` command line: parse, call an engine module, print.

Subcommands live in ``deeplense_cli.commands.*`` and are imported only when used, so
``deeplense --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import os
import sys

import click

from deeplense_cli.commands.group import DeepLenseGroup
from deeplense_cli.core.device import configure_openmp
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.version import __version__
from deeplense_cli.registry.manager import add_commands

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
    "clean": "deeplense_cli.commands.clean:clean",
    "checks": "deeplense_cli.commands.checks:checks",
}


@click.group(
    cls=DeepLenseGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="deeplense")
def cli() -> None:
    """Train, tune, evaluate and deploy classifiers of dark-matter substructure
    in strong-lensing images (DeepLense Model_I/II/III).

    Files live under DEEPLENSE_HOME (default ~/.deeplense): data/ and runs/.
    """


def main() -> None:
    configure_openmp()  # before any command imports torch
    try:
        add_commands(cli)  # plugins' subcommands; a failing plugin is reported and skipped
    except DeepLenseError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    try:
        cli(prog_name="deeplense")
    except SystemExit as exc:
        if exc.code != 130:
            raise
        # Interrupted: the command has unwound, but a worker thread stuck in a read (a network
        # filesystem, a device) would hold the interpreter's exit; one Ctrl+C ends it now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
