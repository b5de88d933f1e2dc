"""deeplense: train, tune, evaluate and deploy dark-matter substructure classifiers."""

__version__ = "0.1.0"

from deeplense_cli.registry.architecture import Architecture
from deeplense_cli.registry.hookspecs import hookimpl

__all__ = ["Architecture", "__version__", "hookimpl"]
