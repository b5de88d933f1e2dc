"""The one exception type that reaches the user as a one-line message."""


class DeepLenseError(Exception):
    """Bad input or a failed precondition: the message says what is wrong and what to do.

    The CLI prints it on one line (no traceback) and exits with status 1.
    """
