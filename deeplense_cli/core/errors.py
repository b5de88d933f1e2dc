"""The one exception type that reaches the user as a one-line message."""


class DeepLenseError(Exception):
    """Bad input or a failed precondition: the message says what is wrong and what to do.

    The CLI prints it on one line (no traceback) and exits with status 1.
    """


def first_line(exc: BaseException, default: str | None = None, limit: int = 300) -> str:
    """The first line of an exception's message, for a one-line error (libraries' messages
    often run to pages); ``default`` (or the exception's type) when the message is empty."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else default or type(exc).__name__)[:limit]
