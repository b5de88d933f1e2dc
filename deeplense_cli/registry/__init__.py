"""Plugins and what they register: the hook specifications, the plugin manager (entry points,
blocking, clashes), :class:`Architecture` and the contract every architecture must meet, and
the trained models that ship with deeplense (``pretrained``: their files and cards).

Imports only ``core``. ``from deeplense_cli.registry import Architecture`` keeps working.
"""

from deeplense_cli.registry.architecture import Architecture

__all__ = ["Architecture"]
