"""The one exception type that reaches the user as a one-line message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeepLenseError(Exception):
    """Bad input or a failed precondition: the message says what is wrong and what to do.

    The CLI prints it on one line (no traceback) and exits with status 1.
    """


def first_line(exc: BaseException, default: str | None = None, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line error (libraries' messages
    often run to pages); ``default`` (or the exception's type) when the message is empty."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else default or type(exc).__name__)[:limit]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the choice closest to a mistyped ``name`` (case
    ignored), or nothing when none is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
