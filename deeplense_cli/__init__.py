"""deeplense: train, tune, evaluate and deploy dark-matter substructure classifiers.

This module is the public API for plugin authors: what they may import is what it exports.
``import deeplense_cli`` stays light; the torch-based helpers load on first use.

Scripts and notebooks use ``from deeplense_cli import api`` (:mod:`deeplense_cli.api`:
simulate, open_dataset, train, evaluate, export_onnx, load_model). It is a module of its own,
not re-exported here: ``deeplense_cli.simulate`` is already the simulation package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.lazy import exports
from deeplense_cli.core.version import __version__
from deeplense_cli.registry.architecture import Architecture
from deeplense_cli.registry.contract import check_architecture
from deeplense_cli.registry.hookspecs import hookimpl
from deeplense_cli.registry.manager import architectures, get_architecture

if TYPE_CHECKING:
    from deeplense_cli.layers.attention import attention, multi_head_attention, split_projection

# imported on first use (they import torch)
__getattr__ = exports(
    "deeplense_cli",
    {
        "attention": "layers.attention:attention",
        "multi_head_attention": "layers.attention:multi_head_attention",
        "split_projection": "layers.attention:split_projection",
    },
)

__all__ = [
    "Architecture",
    "DeepLenseError",
    "__version__",
    "architectures",
    "attention",
    "check_architecture",
    "get_architecture",
    "hookimpl",
    "multi_head_attention",
    "split_projection",
]
