"""Library loggers silenced for a block, where deeplense says the thing itself."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def quieted(names: Iterable[str], level: int) -> Iterator[None]:
    """The loggers ``names`` at ``level`` (e.g. ``logging.ERROR``) inside the block, at their
    own levels again after it."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, levels, strict=True):
            logger.setLevel(previous)
