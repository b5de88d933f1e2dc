"""The image transform shared by training, evaluation, export and prediction.

NumPy only: ``predict`` on an ONNX file must not import torch. The transform is recorded
in every run (``transform.json``) and embedded in every export, so each stage applies
exactly the same steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deeplense_cli.errors import DeepLenseError

NORMALIZATIONS = ("minmax", "none")


def default_transform(image_size: int, in_channels: int = 1) -> dict[str, Any]:
    return {"normalize": "minmax", "image_size": int(image_size), "in_channels": int(in_channels)}


def normalize(images: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Normalise a stack of images ``(N, [C,] H, W)`` per image; returns float32.

    ``minmax`` maps each image to [0, 1] (a constant image becomes all zeros), as the
    reference project did; it makes Model_I's photon counts and Model_II/III's fluxes
    comparable.
    """
    x = np.asarray(images, dtype=np.float32)
    if method == "none":
        return x
    if method != "minmax":
        raise DeepLenseError(
            f"unknown normalisation {method!r} (known: {', '.join(NORMALIZATIONS)})"
        )
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    out = np.zeros_like(x)
    np.divide(x - lo, span, out=out, where=span > 0)
    return out


def apply_transform(images: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Turn raw images ``(N, H, W)`` or ``(N, C, H, W)`` into model input ``(N, C, S, S)``."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DeepLenseError(f"expected images shaped (N, H, W) or (N, C, H, W), got {x.shape}")
    size, channels = int(spec["image_size"]), int(spec.get("in_channels", 1))
    if x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise DeepLenseError(
            f"images are {x.shape[1]}x{x.shape[2]}x{x.shape[3]} (channels x height x width) "
            f"but the model expects {channels}x{size}x{size}"
        )
    return normalize(x, spec.get("normalize", "minmax"))
