"""Plugins and what they register: the hook specifications, the plugin manager (entry points,
blocking, clashes), :class:`Architecture` and the contract every architecture must meet.

Imports only ``core``. ``from deeplense_cli.registry import Architecture`` keeps working.
"""

from deeplense_cli.registry.architecture import Architecture

__all__ = ["Architecture"]
