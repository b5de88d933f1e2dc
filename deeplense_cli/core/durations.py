"""Durations as people write them: ``90s``, ``30m``, ``1h30m``, ``HH:MM:SS``, SLURM's ``D-HH:MM``."""

from __future__ import annotations

import re

from deeplense_cli.core.errors import DeepLenseError

_NUMBER = re.compile(r"\d+(\.\d+)?")
# sbatch --time: MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS (a bare number is handled above)
_CLOCK = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_WITH_UNITS = re.compile(r"(\d+(\.\d+)?[dhms])+")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(
    value: str | float,
    bare_unit: float = 1.0,
    what: str = "duration",
    examples: str = "90s, 30m, 2h, 1h30m or HH:MM:SS",
) -> float:
    """Seconds in ``value``.

    A bare number counts in ``bare_unit`` seconds (1: seconds; 60: minutes, as sbatch reads
    ``--time``). Also read: units (``90s``, ``30m``, ``2h``, ``1h30m``, ``1d``, decimals
    allowed), ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` and ``D-HH:MM:SS``.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) * bare_unit
    text = str(value).strip().lower()
    if _NUMBER.fullmatch(text):
        return float(text) * bare_unit
    clock = _CLOCK.fullmatch(text)
    if clock:
        days, b, c = (int(g) if g is not None else None for g in clock.group(1, 3, 4))
        a = int(clock.group(2))
        if days is not None:  # D-HH[:MM[:SS]]
            return float(days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0))
        if c is not None:  # HH:MM:SS
            return float(a * 3600 + (b or 0) * 60 + c)
        return float(a * 60 + (b or 0))  # MM:SS
    if _WITH_UNITS.fullmatch(text):
        return float(
            sum(float(n) * _UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([dhms])", text))
        )
    raise DeepLenseError(f"cannot read {what} {value!r}; use e.g. {examples}")
