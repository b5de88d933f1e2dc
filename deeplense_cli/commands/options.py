"""Groups of click options that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def option_group(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying ``options`` in the order given (as if stacked in that order
    above the command), so a group shows up in ``--help`` as written."""

    def decorate(fn: Any) -> Any:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate
