"""The optimiser: AdamW with decay and no-decay parameter groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def make_optimizer(
    model: torch.nn.Module, weight_decay: float, lr: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the decay / no-decay groups; the fused kernel on CPU and CUDA.

    torch's default on the CPU loops over the parameters in Python, several kernels each;
    the fused one is one kernel per tensor (BENCHMARKS.md, 'Fused AdamW'). Same update rule
    (tested against the default); checkpoints load into either.
    """
    import torch

    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, fused=fused)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on biases, norms, embeddings/tokens (1-D or tagged parameters).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(k in name.lower() for k in ("pos_emb", "cls_token", "token")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
