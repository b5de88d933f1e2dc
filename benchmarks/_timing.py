"""Training-step timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Any


def optimizer(model: Any, fused: bool = True) -> Any:
    """The optimiser ``deeplense train`` builds (AdamW, decay groups, fused kernel on CPU);
    ``fused=False`` is torch's default per-parameter implementation."""
    import torch

    from deeplense_cli.training.optim import _param_groups, make_optimizer

    if fused:
        return make_optimizer(model, 0.05, 1e-4, torch.device("cpu"))
    return torch.optim.AdamW(_param_groups(model, 0.05), lr=1e-4)


def train_step(model: Any, opt: Any, x: Any, y: Any, bf16: bool, clip: float = 1.0) -> None:
    """One step as ``deeplense train`` takes it: cross-entropy under optional bf16 autocast,
    backward, gradient clipping, optimiser step."""
    import torch
    import torch.nn.functional as F

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def alternating_images_per_s(
    setups: dict[Any, tuple[Any, Any, bool]], x: Any, y: Any, steps: int, warmup: int = 1
) -> dict[Any, float]:
    """Training images/s of each setup ``key -> (model, optimizer, bf16 autocast)``: one
    :func:`train_step` per setup in turn, so machine drift hits all alike; the median over
    ``steps`` timed steps each, after ``warmup`` untimed ones."""
    keys = list(setups)
    times: dict[Any, list[float]] = {k: [] for k in keys}
    for rnd in range((steps + warmup) * len(keys)):
        key = keys[rnd % len(keys)]
        model, opt, bf16 = setups[key]
        start = time.perf_counter()
        train_step(model, opt, x, y, bf16)
        if rnd >= warmup * len(keys):
            times[key].append(time.perf_counter() - start)
    return {k: len(x) / statistics.median(v) for k, v in times.items()}
