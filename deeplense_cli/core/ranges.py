"""The range check every numeric setting goes through: a flag, a config value or an API
argument that is not a finite number in its range is one line naming it."""

from __future__ import annotations

import math
from typing import Any

from deeplense_cli.core.errors import DeepLenseError


def check_number(
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    optional: bool = False,
    hint: str = "",
) -> None:
    """Refuse ``value`` unless it is a finite number in its range (``key`` names it as the
    user wrote it: ``train.lr``, ``--batch-size``); NaN, infinities and booleans never pass."""
    if value is None and optional:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    kind = "a whole number" if integer else "a number"
    if low is not None and high is not None:
        where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        where = f"{'>' if low_open else '>='} {low:g}"
    else:
        where = "(finite)"
    null = " or null" if optional else ""
    raise DeepLenseError(f"{key} must be {kind} {where}{null}{hint}, got {value!r}")
