"""The click group class of ``deeplense`` and its sub-groups: lazy subcommands, one-line errors."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from deeplense_cli.core.atomic import destination_fault, fault_message
from deeplense_cli.core.errors import DeepLenseError


class DeepLenseGroup(click.Group):
    """A group that loads subcommands lazily and turns DeepLenseError (and a destination
    fault: full disk, read-only, no permission) into one line."""

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
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            # Last resort: a full, read-only or unwritable destination that the write did not
            # report itself (also one re-raised from a worker process) is one line all the same.
            fault = destination_fault(exc)
            if fault is None:
                raise
            raise click.ClickException(fault_message(fault, None)) from None
