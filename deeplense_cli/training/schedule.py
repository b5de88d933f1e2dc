"""The learning-rate schedule: linear warm-up, then cosine decay, re-anchored by time budgets."""

from __future__ import annotations

import math

PLAN_PROBE_STEPS = 10  # steps timed to plan a time budget (after one untimed step)


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float,
    anchor: tuple[int, float] | None = None,
) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps`` (per
    optimiser step). ``anchor`` = (step, factor) starts the cosine there instead of at the
    end of the warm-up: how a re-planned time budget moves the end of the decay without
    a jump in the learning rate."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    start, top = (warmup_steps, 1.0)
    if anchor is not None and step >= anchor[0]:
        start, top = anchor
    span = max(1, total_steps - start)
    progress = min(1.0, max(0.0, (step - start) / span))
    return min_ratio + (top - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
