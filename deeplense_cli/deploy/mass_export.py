"""The export side of an axion-mass regressor (``train --task axion-mass``).

The file's one output is the standardised target ``(log10 m - mean) / std``; its metadata
carries the task (``deeplense.task``) and the scaling (``deeplense.target``), which
``predict`` applies. The export is checked against PyTorch in mass units (dex).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import TargetScaling, is_regression

# What ONNX Runtime may differ from PyTorch by, in dex of log10(m / eV), at each precision:
# a tenth of the best published MAE (~0.02 dex) for fp32; fp16 rounds the activations.
TOLERANCE_DEX = {"fp32": 2e-3, "fp16": 2e-2}
# int8 rounds every activation, so single images move more than any fp32 bound: it is held
# to the MEAN |ONNX - PyTorch| over the validation images (the worst image is reported), at
# most 0.02 dex or, where their true masses are known, a quarter of PyTorch's own MAE on
# them, whichever is larger: a rounding error a quarter of the model's, added in quadrature,
# costs about 3% of its MAE.
INT8_MEAN_DEX = 2e-2
INT8_MAE_SHARE = 0.25


def regression_metadata(run: RunDir) -> dict[str, str]:
    """``deeplense.task`` and ``deeplense.target`` for a regressor's file (empty for a
    classifier)."""
    if not is_regression(run.task):
        return {}
    return {
        "deeplense.task": run.task,
        "deeplense.target": json.dumps(run.target_scaling.record(), sort_keys=True),
    }


def check_masses(
    meta: dict[str, str],
    precision: str,
    reference: np.ndarray,
    got: np.ndarray,
    log10_mass: np.ndarray | None,
) -> dict[str, Any]:
    """ONNX Runtime's outputs ``got`` against PyTorch's ``reference`` in dex, and both
    models' MAE on the validation images' true log-masses (when known); an error when
    they differ by more than :data:`TOLERANCE_DEX` on any image (fp32, fp16), or by more
    than :data:`INT8_MEAN_DEX` on average (int8)."""
    scaling = TargetScaling.from_record(json.loads(meta["deeplense.target"]))
    torch_mass = scaling.to_log10_mass(reference[:, 0].astype(np.float64))
    onnx_mass = scaling.to_log10_mass(got[:, 0].astype(np.float64))
    diff = np.abs(onnx_mass - torch_mass)
    worst = float(diff.max()) if len(got) else 0.0
    mean = float(diff.mean()) if len(got) else 0.0
    out: dict[str, Any] = {"max_abs_error_dex": worst, "mean_abs_error_dex": mean}
    if log10_mass is not None and len(log10_mass) == len(got):
        out["mae_dex_torch"] = float(np.abs(torch_mass - log10_mass).mean())
        out["mae_dex_onnx"] = float(np.abs(onnx_mass - log10_mass).mean())
    if precision in TOLERANCE_DEX:
        out["tolerance_dex"] = TOLERANCE_DEX[precision]
        measured, allowed, what = worst, TOLERANCE_DEX[precision], "up to"
    else:
        allowed = max(INT8_MEAN_DEX, INT8_MAE_SHARE * out.get("mae_dex_torch", 0.0))
        out["mean_tolerance_dex"] = allowed
        measured, what = mean, "on average"
    if measured > allowed:
        raise DeepLenseError(
            f"the {precision} ONNX model's axion masses differ from PyTorch's by {what} "
            f"{measured:.3g} dex (allowed: {allowed:.3g}); export it as fp32 instead; "
            "nothing was written"
        )
    return out


def tolerance_text(precision: str) -> str:
    """The rule a regressor's file of ``precision`` is held to, in words."""
    if precision in TOLERANCE_DEX:
        return f"log10 mass within {TOLERANCE_DEX[precision]:g} dex of PyTorch on every image"
    return (
        f"log10 mass within {INT8_MEAN_DEX:g} dex of PyTorch on average over the images, or "
        f"{INT8_MAE_SHARE:g} x PyTorch's MAE on them where that is larger"
    )
