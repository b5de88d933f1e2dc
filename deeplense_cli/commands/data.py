"""``deeplense data``: simulate, download, inspect datasets."""

from __future__ import annotations

import click

from deeplense_cli.commands.group import DeepLenseGroup

SUBCOMMANDS = {
    "simulate": "deeplense_cli.commands.data_simulate:simulate",
    "download": "deeplense_cli.commands.data_download:download",
    "info": "deeplense_cli.commands.data_inspect:info",
    "show": "deeplense_cli.commands.data_inspect:show",
}


@click.group(cls=DeepLenseGroup, lazy=SUBCOMMANDS)
def data() -> None:
    """Simulate, download and inspect lensing datasets (Model_I/II/III)."""
