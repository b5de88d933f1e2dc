"""The image transform shared by training, evaluation, export and prediction.

NumPy only: ``predict`` on an ONNX file must not import torch. The transform is recorded
in every run (``transform.json``) and embedded in every export, so each stage applies
exactly the same steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError

if TYPE_CHECKING:
    from deeplense_cli.data.splits import Splits

NORMALIZATIONS = ("minmax", "none")


# Images used to measure the training set's pixel mean and standard deviation.
STATS_SAMPLE = 2048


def default_transform(
    image_size: int,
    in_channels: int = 1,
    mean: float | None = None,
    std: float | None = None,
    crop: int | None = None,
) -> dict[str, Any]:
    """The transform spec for raw ``image_size`` images; ``mean``/``std`` (of normalised
    training pixels) standardise. With ``crop`` the model sees the central ``crop`` pixels:
    ``image_size`` in the spec is always the model's input size, ``source_size`` the raw one."""
    spec: dict[str, Any] = {
        "normalize": "minmax",
        "image_size": int(crop or image_size),
        "in_channels": int(in_channels),
    }
    if crop:
        spec["crop"], spec["source_size"] = int(crop), int(image_size)
    if mean is not None and std is not None:
        spec["mean"], spec["std"] = float(mean), float(std)
    return spec


def source_size(spec: dict[str, Any]) -> int:
    """The raw image size a transform takes: the size it crops from, else the model's."""
    return int(spec.get("source_size", spec["image_size"]))


def center_crop(images: np.ndarray, crop: int | None) -> np.ndarray:
    """The central ``crop`` x ``crop`` pixels of ``(..., H, W)`` images (all of them if None).

    The lens sits at the centre of every DeepLense image; the outer pixels are mostly sky."""
    if not crop:
        return images
    h, w = images.shape[-2:]
    if crop > min(h, w):
        raise DeepLenseError(f"cannot crop {crop}x{crop} pixels from {h}x{w} images")
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def pixel_statistics(
    images: Any, idx: np.ndarray, method: str = "minmax", crop: int | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of the normalised (and cropped) pixels of ``images[idx]``.

    At most ``STATS_SAMPLE`` evenly spaced images of ``idx`` are read (deterministic).
    """
    idx = np.sort(np.asarray(idx))
    if len(idx) > STATS_SAMPLE:
        idx = idx[np.linspace(0, len(idx) - 1, STATS_SAMPLE).round().astype(int)]
    if len(idx) == 0:
        raise DeepLenseError("no training images to measure the pixel statistics on")
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(idx), 256):
        raw = center_crop(np.asarray(images[idx[start : start + 256]]), crop)
        x = normalize(raw, method).astype(np.float64)
        total += float(x.sum())
        total_sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    if not np.isfinite(std) or std <= 1e-6:
        std = 1.0  # constant training images: only shift them
    return mean, std


def normalize(
    images: np.ndarray,
    method: str = "minmax",
    mean: float | None = None,
    std: float | None = None,
) -> np.ndarray:
    """Normalise a stack of images ``(N, [C,] H, W)`` per image; returns float32.

    ``minmax`` maps each image to [0, 1] (a constant image becomes all zeros), as the
    reference project did; it makes Model_I's photon counts and Model_II/III's fluxes
    comparable. With ``mean`` and ``std`` (the training set's statistics after that step),
    the result is then standardised: ``(x - mean) / std``. Min-max lensing images are mostly
    dark sky, which leaves the inputs of linear patch embeddings nearly constant
    (BENCHMARKS.md, 'Inputs, BatchNorm and per-architecture defaults').
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
    if mean is not None and std is not None:
        out -= np.float32(mean)
        out /= np.float32(std)
    return out


def spec_statistics(spec: dict[str, Any]) -> tuple[float | None, float | None]:
    """The spec's standardisation (``None, None`` for runs made before it existed)."""
    mean, std = spec.get("mean"), spec.get("std")
    if mean is None or std is None:
        return None, None
    try:
        mean, std = float(mean), float(std)
    except (TypeError, ValueError):
        raise DeepLenseError(f"bad transform statistics mean={mean!r} std={std!r}") from None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise DeepLenseError(f"bad transform statistics mean={mean} std={std}")
    return mean, std


def apply_transform(images: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Turn raw images ``(N, H, W)`` or ``(N, C, H, W)`` into model input ``(N, C, S, S)``."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DeepLenseError(f"expected images shaped (N, H, W) or (N, C, H, W), got {x.shape}")
    size, channels = source_size(spec), int(spec.get("in_channels", 1))
    if x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
        raise DeepLenseError(
            f"images are {x.shape[1]}x{x.shape[2]}x{x.shape[3]} (channels x height x width) "
            f"but the model expects {channels}x{size}x{size}"
        )
    x = center_crop(x, spec.get("crop"))
    return normalize(x, spec.get("normalize", "minmax"), *spec_statistics(spec))


def transform_for(
    splits: Splits, standardize: bool = True, crop: int | None = None
) -> dict[str, Any]:
    """The run's transform: an optional centre crop, min-max per image, then the training
    pixels' mean and std."""
    shape = splits.train.images.shape
    if shape[-1] != shape[-2]:
        raise DeepLenseError(f"images must be square, got {shape[-2]}x{shape[-1]}")
    check_crop(crop, int(shape[-1]))
    mean = std = None
    if standardize:
        mean, std = pixel_statistics(splits.train.images, splits.train_idx, crop=crop)
    return default_transform(
        image_size=int(shape[-1]), in_channels=int(shape[1]), mean=mean, std=std, crop=crop
    )


def check_crop(crop: Any, size: int | None = None) -> None:
    """``data.crop`` is None or a whole number of pixels, at most the images' size."""
    if crop is None:
        return
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
        raise DeepLenseError(f"data.crop must be a whole number of pixels (or null), got {crop!r}")
    if size is not None and crop > size:
        raise DeepLenseError(
            f"data.crop is {crop} pixels but the images are {size}x{size}; choose at most {size}"
        )
