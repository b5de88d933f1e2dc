"""The learning-rate schedule: linear warm-up, then cosine decay, re-anchored by time budgets."""

from __future__ import annotations

import math


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float,
    anchor: tuple[int, float] | None = None,
) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps`` (per
    optimiser step).

    ``anchor`` = (step, factor): a re-planned time budget moved the end of the decay at that
    step, where the rate was ``factor``. From there the rate follows the cosine that has
    ``factor`` at that step and ends at ``total_steps``: the same curve, slid, with no jump.
    (Restarting a whole cosine from the anchor instead began each re-plan on the cosine's
    flat top; budgets re-plan after every epoch, so a 34-epoch plan held its peak rate for
    most of the run and fell only in its last few epochs.)
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    start = float(warmup_steps)
    if anchor is not None and step >= anchor[0]:
        start = _cosine_start(anchor[0], anchor[1], total_steps, min_ratio)
    span = max(1.0, total_steps - start)
    progress = min(1.0, max(0.0, (step - start) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cosine_start(step: int, factor: float, total_steps: int, min_ratio: float) -> float:
    """Where a whole cosine from 1 to ``min_ratio`` ending at ``total_steps`` would start for
    its rate at ``step`` to be ``factor`` (before ``step``, possibly before step 0)."""
    level = (factor - min_ratio) / max(1e-12, 1.0 - min_ratio)
    progress = math.acos(min(1.0, max(-1.0, 2.0 * level - 1.0))) / math.pi  # of that cosine
    if progress >= 1.0 or total_steps <= step:
        return float(step)  # at the floor already, or nothing left: the floor from here
    return (step - progress * total_steps) / (1.0 - progress)
