"""Lazy re-exports for a package's ``__init__`` (PEP 562): the package names what its
submodules hold, and a name's submodule is imported when the name is first used, so that
importing one light submodule does not load the heavy ones beside it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any


def exports(package: str, names: dict[str, str], live: Iterable[str] = ()) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each of ``names`` maps to
    ``"submodule:attribute"``. A name is looked up once and kept in the package, except the
    ``live`` ones, whose value changes (looked up on every use)."""
    live = frozenset(live)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = names[name].split(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attr)
        if name not in live:
            setattr(sys.modules[package], name, value)
        return value

    return __getattr__
