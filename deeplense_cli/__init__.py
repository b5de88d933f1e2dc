"""deeplense: train, tune, evaluate and deploy dark-matter substructure classifiers."""

__version__ = "0.1.0"

from deeplense_cli.hookspecs import hookimpl
from deeplense_cli.registry import Architecture

__all__ = ["Architecture", "__version__", "hookimpl"]
