"""Batched PyTorch inference over raw image arrays, applying the run's transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core.device import exact_float32
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.evaluation import EVAL_BATCH_SIZE

if TYPE_CHECKING:
    import torch


def iter_batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray,
    transform: dict[str, Any],
    indices: np.ndarray | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    device: torch.device | None = None,
    progress: Callable[[int], None] | None = None,
    half_turn: bool = False,
) -> np.ndarray:
    """Logits ``(N, num_classes)`` for ``images[indices]`` (raw, untransformed images);
    ``half_turn``: of the transformed images rotated by 180 degrees (test-time augmentation)."""
    import torch

    device = device or torch.device("cpu")
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    out: list[np.ndarray] = []
    model.eval()
    with torch.inference_mode(), exact_float32(device):
        for sl in iter_batches(len(idx), batch_size):
            batch_idx = idx[sl]
            # Sorted reads are sequential on a memory-mapped cache; restore order after.
            order = np.argsort(batch_idx, kind="stable")
            raw = np.asarray(images[batch_idx[order]])
            x = torch.from_numpy(apply_transform(raw, transform)).to(device)
            if half_turn:
                x = torch.rot90(x, 2, dims=(-2, -1))
            logits = model(x)
            result = np.empty((len(batch_idx), logits.shape[1]), dtype=np.float32)
            result[order] = logits.float().cpu().numpy()
            out.append(result)
            if progress is not None:
                progress(len(batch_idx))
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)
