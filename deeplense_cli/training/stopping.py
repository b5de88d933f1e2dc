"""Which epoch is best, and which epochs count as progress for early stopping."""

from __future__ import annotations

import math
from typing import Any

from deeplense_cli.training.defaults import METRICS


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def improved(row: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    """Is ``row`` better than ``best`` on ``metric`` (ties broken by lower val_loss)?

    Without a value to compare (no validation split) the later epoch is the better: the
    result of a run without validation is its last epoch, not its first."""
    value: Any = row.get(metric)
    if _missing(value):
        return best is None or _missing(best.get(metric))
    if best is None or _missing(best.get(metric)):
        return True
    sign = 1.0 if METRICS[metric] == "max" else -1.0
    a, b = sign * float(value), sign * float(best[metric])
    if a != b:
        return a > b
    return float(row.get("val_loss", math.inf)) < float(best.get("val_loss", math.inf))


def progressed(value: Any, reference: float | None, metric: str, min_delta: float) -> bool:
    """Does ``value`` beat ``reference`` on ``metric`` by more than ``min_delta``?

    Early stopping counts epochs without such progress. ``improved`` picks the best
    checkpoint by any gain, but a change of 1e-7 in a frozen model's validation loss is
    floating-point noise, not progress, and must not reset the patience.
    """
    if _missing(value):
        return False
    if reference is None:
        return True
    sign = 1.0 if METRICS[metric] == "max" else -1.0
    return sign * (float(value) - float(reference)) > min_delta


def selection_warning(val_images: int) -> str | None:
    """What a run without validation images must be told: its best.pt is its last epoch."""
    if val_images:
        return None
    return (
        "no validation split (data.val_fraction 0): no epoch can be judged best, so best.pt "
        "is the last epoch's model"
    )
