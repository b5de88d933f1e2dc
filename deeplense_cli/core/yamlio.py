"""YAML reading for configs, search spaces and run records.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``5e-4`` and
``1.0e4`` load as STRINGS, so ``--set train.lr=5e-4`` or ``lr: 3e-4`` in a config file would be
rejected as "not a number". :class:`Loader` also reads YAML 1.2 floats (``5e-4``, ``1e4``,
``1.5E+3``, ``.5e-2``); everything else is PyYAML's safe loader unchanged (no Python tags).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# Floats YAML 1.1 misses: an exponent without a dot or without a sign.
_YAML12_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$",
)


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also resolves YAML 1.2 exponent floats."""


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse YAML text safely (see :class:`Loader`)."""
    return yaml.load(text, Loader=Loader)  # Loader is a SafeLoader: no Python tags
