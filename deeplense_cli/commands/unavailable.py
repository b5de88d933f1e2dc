"""Commands whose engine is not part of this version yet: they say so and exit non-zero."""

from __future__ import annotations

import click

from deeplense_cli.errors import DeepLenseError


def unavailable(name: str, summary: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{summary} [not available yet]",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def command() -> None:
        raise DeepLenseError(f"`deeplense {name}` is not available in this version yet")

    return command
