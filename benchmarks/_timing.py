"""Training-step timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Any


def alternating_images_per_s(
    setups: dict[Any, tuple[Any, Any, bool]], x: Any, y: Any, steps: int, warmup: int = 1
) -> dict[Any, float]:
    """Training images/s of each setup ``key -> (model, optimizer, bf16 autocast)``: one
    cross-entropy + AdamW step per setup in turn, so machine drift hits all alike; the
    median over ``steps`` timed steps each, after ``warmup`` untimed ones."""
    import torch
    import torch.nn.functional as F

    keys = list(setups)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    for rnd in range((steps + warmup) * len(keys)):
        key = keys[rnd % len(keys)]
        model, opt, bf16 = setups[key]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rnd >= warmup * len(keys):
            times[key].append(time.perf_counter() - start)
    return {k: len(x) / statistics.median(v) for k, v in times.items()}
