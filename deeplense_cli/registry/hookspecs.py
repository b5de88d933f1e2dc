"""The hooks a deeplense plugin can implement.

A plugin is a module listed under the ``deeplense`` entry-point group. It implements
hooks with ``@deeplense_cli.hookimpl``. Hooks receive a ``register`` callback so that the
core validates what is registered and can grow new keyword arguments later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from deeplense_cli.registry.architecture import Architecture

hookspec = pluggy.HookspecMarker("deeplense")
hookimpl = pluggy.HookimplMarker("deeplense")


@hookspec
def register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register model architectures.

    :param register: call ``register(Architecture(...))`` once per architecture. The
        architecture's ``factory`` must import heavy libraries (torch) inside itself, so
        that listing commands stay fast.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``deeplense`` command line.

    :param cli: the root ``deeplense`` group; call ``cli.add_command(...)``.
    """


@hookspec
def register_export_formats(register: Callable[..., Any]) -> None:
    """Register model export formats for ``deeplense export FORMAT``.

    :param register: call ``register(name, command)`` where ``command`` is a click command
        taking the run directory as its first argument.
    """


@hookspec
def register_loggers(register: Callable[..., Any]) -> None:
    """Register experiment trackers for ``deeplense train --log NAME``.

    :param register: call ``register(name, factory, requires=(), install="")`` once per
        logger. ``factory()`` returns a new logger object (the methods of
        ``deeplense_cli.tracking.Logger``), one per run; import the tracking library inside
        its methods, not at module level. ``requires`` names the modules it imports: they are
        imported before a run starts, and a missing one stops it with ``install`` (the
        command that installs them) in the message.
    """
