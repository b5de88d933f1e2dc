"""Library loggers and output silenced for a block, where deeplense says the thing itself."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
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


@contextlib.contextmanager
def silenced_output() -> Iterator[None]:
    """Silence the block's warnings and everything it prints, including what C++ code writes
    to the process's stdout and stderr (a failed TorchScript export prints its whole graph
    there, thousands of lines; the error itself reaches the user through the exception)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
