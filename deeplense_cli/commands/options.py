"""Groups of click options that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def option_group(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying ``options`` in the order given (as if stacked in that order
    above the command), so a group shows up in ``--help`` as written."""

    def decorate(fn: Any) -> Any:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


# The data root of the dataset commands (train has its own, in a group of data flags).
data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder holding the released datasets (default: DEEPLENSE_DATA_ROOT or ~/.deeplense/data).",
)
