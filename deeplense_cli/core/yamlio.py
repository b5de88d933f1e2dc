"""YAML reading for configs, search spaces and run records.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: ``5e-4`` and
``1.0e4`` load as STRINGS, so ``--set train.lr=5e-4`` or ``lr: 3e-4`` in a config file would be
rejected as "not a number". :class:`Loader` also reads YAML 1.2 floats (``5e-4``, ``1e4``,
``1.5E+3``, ``.5e-2``); everything else is PyYAML's safe loader unchanged (no Python tags).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from deeplense_cli.core.errors import DeepLenseError, first_line

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


def load_mapping(path: str | os.PathLike[str], what: str, expected: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (``what``: "config file", "space file"; an
    empty file is an empty mapping); ``expected`` says what the mapping should look like."""
    p = Path(path)
    try:
        raw = load(p.read_text())
    except OSError as exc:
        raise DeepLenseError(f"cannot read {what} {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DeepLenseError(f"{what} {p} is not valid YAML: {first_line(exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DeepLenseError(f"{what} {p} must hold a mapping: {expected}")
    return raw
