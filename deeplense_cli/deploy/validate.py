"""The checks an exported file passes before it is written: ONNX Runtime against PyTorch.

``onnx.checker`` first, then the file's logits on ONNX Runtime (CPU) against the PyTorch
model's on the same images, at each batch size. fp32 and fp16 are judged per logit
(``TOLERANCES``); int8 by how often the top class agrees with PyTorch's on the images
PyTorch decides (its two most probable classes at least ``INT8_NEAR_TIE`` apart).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.deploy.onnx_session import INPUT_NAME, OUTPUT_NAME, create_session
from deeplense_cli.evaluation.metrics import softmax

if TYPE_CHECKING:
    import torch

# Elementwise logit tolerance: |onnx - torch| <= ABS + REL * max|torch logits|.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (2e-2, 2e-2),
}
INT8_MIN_AGREEMENT = 0.9  # int8: share of images whose top class matches PyTorch
# int8 is judged on the images PyTorch decides: where its two most probable classes are
# closer than this, rounding alone can swap them.
INT8_NEAR_TIE = 0.05


@dataclass
class Check:
    """ONNX Runtime versus PyTorch at one batch size."""

    batch_size: int
    images: int
    max_abs_error: float
    max_rel_error: float  # max |error| / max |PyTorch logit|
    argmax_agreement: float
    passed: bool
    # int8: the images judged (PyTorch's top two probabilities >= INT8_NEAR_TIE apart) and
    # the top-class agreement on them
    judged_images: int | None = None
    judged_agreement: float | None = None


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """PyTorch logits for a transformed batch, in chunks of ``batch_size``."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))))
    return torch.cat(out).float().numpy()


def compare(onnx_logits: np.ndarray, torch_logits_: np.ndarray) -> tuple[float, float, float]:
    """(max abs error, max abs error / max |reference|, top-class agreement)."""
    err = np.abs(onnx_logits.astype(np.float64) - torch_logits_.astype(np.float64))
    scale = float(np.abs(torch_logits_).max()) if torch_logits_.size else 0.0
    max_abs = float(err.max()) if err.size else 0.0
    agree = float((onnx_logits.argmax(1) == torch_logits_.argmax(1)).mean()) if err.size else 1.0
    return max_abs, max_abs / max(scale, 1e-12), agree


def ort_logits(session: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """ONNX Runtime logits for a transformed batch, in chunks of ``batch_size``."""
    out = []
    for i in range(0, len(x), batch_size):
        chunk = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        out.append(session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
    return np.concatenate(out).astype(np.float32)


def validate(
    path: str | os.PathLike[str],
    reference: np.ndarray,
    x: np.ndarray,
    precision: str,
    batch_sizes: tuple[int, ...] = (1, 32),
    batch1_images: int = 8,
    min_agreement: float = INT8_MIN_AGREEMENT,
    regressor: bool = False,
) -> tuple[list[Check], np.ndarray]:
    """Run the model file on ONNX Runtime (CPU) and compare with PyTorch ``reference``.

    Returns the checks and ORT's logits at the largest batch size. An int8 ``regressor``
    (one output, no top class) passes here: its caller judges it in dex
    (:func:`deeplense_cli.deploy.mass_export.check_masses`).
    """
    import onnx

    try:
        onnx.checker.check_model(os.fspath(path))
    except Exception as exc:
        raise DeepLenseError(f"the exported model fails onnx.checker: {first_line(exc)}") from None
    session, _ = create_session(path, "cpu", cache_optimized=False)
    checks, last = [], reference
    for bs in batch_sizes:
        # fp32/fp16 are judged per logit, which a few images show; int8 by the share of top
        # classes that agree, which needs every image (one flip in 8 would be 12.5 points).
        n = min(len(x), batch1_images) if bs == 1 and precision in TOLERANCES else len(x)
        got = ort_logits(session, x[:n], bs)
        max_abs, max_rel, agree = compare(got, reference[:n])
        check = Check(bs, n, max_abs, max_rel, agree, passed=False)
        if precision in TOLERANCES:
            atol, rtol = TOLERANCES[precision]
            scale = float(np.abs(reference[:n]).max())
            check.passed = max_abs <= atol + rtol * scale
        elif regressor:
            check.passed = True
        else:
            judged = ~near_ties(reference[:n])
            same = got.argmax(1) == reference[:n].argmax(1)
            check.judged_images = int(judged.sum())
            check.judged_agreement = float(same[judged].mean()) if judged.any() else 1.0
            check.passed = check.judged_agreement >= min_agreement
        checks.append(check)
        last = got
    return checks, last


def near_ties(logits: np.ndarray) -> np.ndarray:
    """Rows whose two most probable classes are less than ``INT8_NEAR_TIE`` apart."""

    top2 = np.sort(softmax(logits.astype(np.float64)), axis=1)[:, -2:]
    return np.asarray(top2[:, 1] - top2[:, 0] < INT8_NEAR_TIE)


def tolerance_text(precision: str, min_agreement: float) -> str:
    """The rule a file of ``precision`` is held to, in words."""
    if precision in TOLERANCES:
        atol, rtol = TOLERANCES[precision]
        return f"|error| <= {atol:g} + {rtol:g} x max|logit|"
    return (
        f"top class agrees with PyTorch on >= {min_agreement:.0%} of the images PyTorch "
        f"decides (its top two classes >= {INT8_NEAR_TIE:.0%} of probability apart)"
    )


def mismatch(check: Check, precision: str, tolerance: str) -> DeepLenseError:
    """The error for a failed check: what was measured against what was needed."""
    judged = ""
    if check.judged_images is not None and check.judged_agreement is not None:
        judged = (
            f", {check.judged_agreement:.1%} of the {check.judged_images} images PyTorch decides"
        )
    return DeepLenseError(
        f"the {precision} ONNX model does not match PyTorch at batch {check.batch_size}: "
        f"max abs error {check.max_abs_error:.3g}, max rel error {check.max_rel_error:.3g}, "
        f"top class agrees on {check.argmax_agreement:.1%}{judged} (needed: "
        f"{tolerance}); nothing was written"
    )
