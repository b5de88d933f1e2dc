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


def regression_metadata(run: RunDir, precision: str) -> dict[str, str]:
    """``deeplense.task`` and ``deeplense.target`` for a regressor's file (empty for a
    classifier); int8 is refused (its rounding is judged by top-class agreement only)."""
    if not is_regression(run.task):
        return {}
    if precision not in TOLERANCE_DEX:
        raise DeepLenseError(
            f"--precision {precision} is not available for an axion-mass model yet; "
            f"use {' or '.join(TOLERANCE_DEX)}"
        )
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
    they differ by more than :data:`TOLERANCE_DEX`."""
    scaling = TargetScaling.from_record(json.loads(meta["deeplense.target"]))
    torch_mass = scaling.to_log10_mass(reference[:, 0].astype(np.float64))
    onnx_mass = scaling.to_log10_mass(got[:, 0].astype(np.float64))
    worst = float(np.abs(onnx_mass - torch_mass).max()) if len(got) else 0.0
    out: dict[str, Any] = {"max_abs_error_dex": worst, "tolerance_dex": TOLERANCE_DEX[precision]}
    if log10_mass is not None and len(log10_mass) == len(got):
        out["mae_dex_torch"] = float(np.abs(torch_mass - log10_mass).mean())
        out["mae_dex_onnx"] = float(np.abs(onnx_mass - log10_mass).mean())
    if worst > TOLERANCE_DEX[precision]:
        raise DeepLenseError(
            f"the {precision} ONNX model's axion masses differ from PyTorch's by up to "
            f"{worst:.3g} dex (allowed: {TOLERANCE_DEX[precision]:g}); nothing was written"
        )
    return out
