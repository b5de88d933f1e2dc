"""Shared terminal output helpers (rich), kept out of the engine modules."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_console: Console | None = None
_err: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        # rich is imported on first output: `deeplense --help` prints none and must start fast
        from rich.console import Console

        _console = Console()
    return _console


def err_console() -> Console:
    global _err
    if _err is None:
        from rich.console import Console

        _err = Console(stderr=True)
    return _err


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
