"""Test-time augmentation over the simulations' true symmetry.

The DeepLense simulations fix the main lens's orientation, so a half turn maps the data onto
itself and a quarter turn does not (BENCHMARKS.md, "Augmentation"). ``rot180`` averages the
logits of each image and of its half turn: about +0.2 points on Model_I and Model_II for half
the images/s (BENCHMARKS.md, "Test-time augmentation"). The out-of-distribution score is the
image's own, unrotated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from deeplense_cli.core.errors import DeepLenseError

if TYPE_CHECKING:  # NumPy is imported where it is used: the commands' --help reads TTA
    import numpy as np

TTA = ("none", "rot180")  # the first, no augmentation, is the default


def check_tta(tta: str | None) -> str:
    """``tta`` as one of :data:`TTA` (None: none)."""
    value = tta or "none"
    if value not in TTA:
        raise DeepLenseError(f"unknown test-time augmentation {tta!r}; use {', '.join(TTA)}")
    return value


def half_turn(x: np.ndarray) -> np.ndarray:
    """Transformed inputs ``(N, C, S, S)`` rotated by 180 degrees."""
    import numpy as np

    return np.ascontiguousarray(np.asarray(x)[..., ::-1, ::-1])


def with_tta(
    outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    x: np.ndarray,
    tta: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``outputs(x)`` with the logits averaged over ``tta``'s transforms."""
    import numpy as np

    logits, scores = outputs(x)
    if tta == "rot180":
        turned, _ = outputs(half_turn(x))
        logits = (logits.astype(np.float32) + turned.astype(np.float32)) / 2
    return logits, scores
