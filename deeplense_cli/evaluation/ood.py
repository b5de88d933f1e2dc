"""Out-of-distribution detection: does an image look like the data the model was trained on?

The detector is the Mahalanobis distance of the model's penultimate features (the input of
its classifier head) to the nearest class mean, under one covariance shared by the classes
(Lee et al. 2018), fitted on training images. Those features are made to ignore what the
classes do not depend on, so a few statistics of the input itself join them (``descriptor``:
the mean brightness and the Laplacian energy at two scales in rings around the centre): lens
light, another PSF or noise level move those long before they move the class features. Its threshold is the ``QUANTILE`` of the
distances of held-back in-distribution images (the validation split, never the images it
was fitted on), so about 1% of fresh in-distribution images are flagged by design. An
axion-mass regressor's detector has one mean, of the images that carry a mass (the input of
its one-output head).
BENCHMARKS.md ("Out-of-distribution flag") has what it catches and what it costs.

Run directories keep their fitted detector in ``RUN/ood-<checkpoint>.npz`` (plain arrays,
loaded with ``allow_pickle=False``); exports carry it inside the ONNX graph
(:mod:`deeplense_cli.deploy.ood_graph`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.evaluation import EVAL_BATCH_SIZE
from deeplense_cli.runs.task import is_regression, num_outputs

if TYPE_CHECKING:
    import torch

    from deeplense_cli.runs.rundir import RunDir

METHOD = "mahalanobis-tied+input-rings"
RINGS = 8  # radial bins of the input statistics
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=np.float32)
QUANTILE = 0.99  # of held-back in-distribution scores: ~1% of them flagged
FIT_IMAGES = 4096  # at most, evenly spread over the training split
CALIBRATION_IMAGES = 2048  # at most, of the validation split
SHRINKAGE = 0.01  # covariance shrinkage towards its mean variance: a stable inverse
EXPLANATION = (
    "flagged: unlike the data the model was trained on, so its predictions for them are "
    "unreliable. Fine-tune on labelled images of this kind: deeplense train --init {source} "
    "--data DIR"
)


@dataclass
class Detector:
    """A fitted detector: ``score(features)``; flagged when the score exceeds ``threshold``."""

    means: np.ndarray  # (classes it was fitted on, D)
    factor: np.ndarray  # (D, D): precision = factor @ factor.T
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per row."""
        z = np.asarray(features, dtype=np.float64) @ self.factor
        centres = self.means.astype(np.float64) @ self.factor
        d = ((z[:, None, :] - centres[None]) ** 2).sum(-1)
        return np.asarray(d.min(axis=1), dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        """What a model card or an export records: method, threshold and its calibration."""
        return {"method": METHOD, "threshold": self.threshold, **self.info}

    def save(self, path: Path) -> None:
        with atomic.atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                means=self.means,
                factor=self.factor,
                threshold=np.float64(self.threshold),
                info=np.array(json.dumps(self.info)),
            )

    @classmethod
    def load(cls, path: Path) -> Detector:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                means=data["means"],
                factor=data["factor"],
                threshold=float(data["threshold"]),
                info=json.loads(str(data["info"])),
            )


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    calibration: np.ndarray,
    info: dict[str, Any] | None = None,
    quantile: float = QUANTILE,
) -> Detector:
    """Class means and a shared, shrunk covariance from ``features``; the threshold from the
    ``calibration`` features (held-back in-distribution images)."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    present = [c for c in range(num_classes) if (labels == c).any()]
    if len(x) < 2 or len(calibration) == 0 or not present:
        raise DeepLenseError("too few images to fit the out-of-distribution detector")
    dim = x.shape[1]
    x, labels = x[np.isin(labels, present)], labels[np.isin(labels, present)]
    means = np.zeros((len(present), dim))  # the classes the fitting images hold
    centred = np.empty_like(x)
    for row, c in enumerate(present):
        rows = labels == c
        means[row] = x[rows].mean(0)
        centred[rows] = x[rows] - means[row]
    cov = centred.T @ centred / max(len(x) - len(present), 1)
    scale = float(np.trace(cov)) / dim or 1.0
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(dim)
    factor = np.linalg.cholesky(np.linalg.inv(cov))
    detector = Detector(means.astype(np.float32), factor.astype(np.float32), 0.0)
    held = detector.scores(calibration)
    detector.threshold = float(np.quantile(held, quantile))
    detector.info = {
        "quantile": quantile,
        "fit_images": len(x),
        "calibration_images": len(held),
        "calibration_flagged": float((held > detector.threshold).mean()),
        **(info or {}),
    }
    return detector


def ring_matrix(size: int, rings: int = RINGS) -> np.ndarray:
    """``(size*size, rings)``: row-major pixels to the mean over each ring around the centre."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    ring = np.minimum((radius / max(radius.max(), 1e-9) * rings).astype(int), rings - 1)
    matrix = np.zeros((size * size, rings), dtype=np.float32)
    matrix[np.arange(size * size), ring.ravel()] = 1
    return matrix / np.maximum(matrix.sum(0), 1)


def _abs_laplacian(x: np.ndarray) -> np.ndarray:
    """|Laplacian| of ``(N, H, W)`` images, zero-padded to the same size (as ONNX's Conv)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4 * x
    return np.abs(lap)


def descriptor(x: np.ndarray) -> np.ndarray:
    """``(N, 3 * RINGS)`` statistics of transformed model inputs ``(N, C, S, S)``: per ring,
    the mean value, the mean |Laplacian|, and the mean |Laplacian| of the 2x2-averaged image
    (:func:`deeplense_cli.deploy.ood_graph.append_descriptor` computes the same in ONNX)."""
    m = np.asarray(x, dtype=np.float32).mean(axis=1)
    n, size = len(m), m.shape[-1]
    half = size // 2
    h = m[:, : half * 2, : half * 2].reshape(n, half, 2, half, 2).mean(axis=(2, 4))
    rings, rings_half = ring_matrix(size), ring_matrix(half)
    return np.concatenate(
        [
            m.reshape(n, -1) @ rings,
            _abs_laplacian(m).reshape(n, -1) @ rings,
            _abs_laplacian(h).reshape(n, -1) @ rings_half,
        ],
        axis=1,
    )


def head(model: torch.nn.Module, num_classes: int) -> torch.nn.Module | None:
    """The classifier head: the last Linear layer with one output per class."""
    import torch

    found = None
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == num_classes:
            found = module
    return found


@contextmanager
def capture_features(model: torch.nn.Module, num_classes: int) -> Iterator[list[np.ndarray]]:
    """Collect what the detector scores for every forward pass inside: the head's inputs (the
    penultimate features) followed by the :func:`descriptor` of the model's input."""
    layer = head(model, num_classes)
    if layer is None:
        raise DeepLenseError(
            "no classifier head (a Linear layer with one output per class) in this model: "
            "no out-of-distribution detector"
        )
    collected: list[np.ndarray] = []
    inputs: list[np.ndarray] = []

    def keep_input(_module: Any, args: tuple[Any, ...]) -> None:
        inputs.append(descriptor(args[0].detach().float().cpu().numpy()))

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        features = args[0].detach().float().reshape(len(args[0]), -1).cpu().numpy()
        collected.append(np.concatenate([features, inputs.pop()], axis=1))

    handles = [model.register_forward_pre_hook(keep_input), layer.register_forward_pre_hook(hook)]
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()


def spread(idx: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``idx``, evenly spaced (deterministic)."""
    idx = np.sort(np.asarray(idx))
    if len(idx) > n:
        idx = idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]
    return idx


def with_degraded(
    raw: np.ndarray, labels: np.ndarray | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """``raw`` images followed by 8-bit PNG/JPEG versions of every second one: the fitting
    and calibration images of a model trained with ``train.degrade``, which is meant to
    answer such files, not to flag them."""
    from deeplense_cli.data.degrade import degrade

    half = np.asarray(raw)[::2]
    more = degrade(half, np.random.default_rng([seed, 11]), 1.0)
    extra = None if labels is None else np.concatenate([labels, np.asarray(labels)[::2]])
    return np.concatenate([np.asarray(raw, dtype=np.float32), more]), extra


def detector_path(run: RunDir, checkpoint: str) -> Path:
    return run.path / f"ood-{checkpoint}.npz"


def _stamp(run: RunDir, checkpoint: str) -> str:
    stat = run.checkpoint_path(checkpoint).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def run_detector(
    run: RunDir,
    model: torch.nn.Module,
    checkpoint: str = "best",
    device: torch.device | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[Detector | None, str]:
    """The run's detector for ``checkpoint``, fitted on its training split and calibrated on
    its validation split the first time and kept in the run; ``(None, why)`` when the run's
    data is not on this machine."""
    from deeplense_cli.data.splits import load_splits
    from deeplense_cli.data.targets import mass_only
    from deeplense_cli.evaluation.inference import predict_logits

    path = detector_path(run, checkpoint)
    stamp = _stamp(run, checkpoint)
    if path.is_file():
        try:
            cached = Detector.load(path)
            if cached.info.get("checkpoint_stamp") == stamp:
                return cached, ""
        except (OSError, ValueError, KeyError):
            pass  # damaged or from an older checkpoint: fit again
    regressor = is_regression(run.task)  # one mean, of the images that carry a mass
    try:
        splits = load_splits(run.read_config())
        if regressor:
            splits = mass_only(splits)
    except (DeepLenseError, KeyError, OSError) as exc:
        return None, f"the run's training data is not available here ({first_line(exc)})"
    if list(splits.classes) != run.classes:
        return None, f"the run's data now has classes {splits.classes}"
    fit_idx = spread(splits.train_idx, FIT_IMAGES)
    held_idx = spread(splits.val_idx, CALIBRATION_IMAGES)
    note = "validation split"
    if len(held_idx) == 0:  # no validation split: training images it was not fitted on
        held_idx = np.setdiff1d(spread(splits.train_idx, FIT_IMAGES * 2), fit_idx)
        held_idx = held_idx[:CALIBRATION_IMAGES]
        note = "training images outside the fitting sample (the run has no validation split)"
    if len(fit_idx) < 2 or len(held_idx) == 0:
        return None, "the run has too few training images to fit the detector"
    num_classes = num_outputs(run.task, run.classes)
    if head(model, num_classes) is None:
        return None, "the model has no classifier head (a Linear layer with one output per class)"
    degraded = float((run.read_config().get("train") or {}).get("degrade") or 0) > 0
    fit_raw = np.asarray(splits.train.images[np.sort(fit_idx)])
    fit_labels = np.asarray(splits.train.labels)[np.sort(fit_idx)]
    if regressor:
        fit_labels = np.zeros_like(fit_labels)
    held_raw = np.asarray(splits.train.images[np.sort(held_idx)])
    if degraded:  # a model trained to answer 8-bit files must not flag them
        fit_raw, labels = with_degraded(fit_raw, fit_labels)
        assert labels is not None
        fit_labels = labels
        held_raw = with_degraded(held_raw, None)[0]
    parts = []
    for raw in (fit_raw, held_raw):
        with capture_features(model, num_classes) as feats:
            predict_logits(model, raw, run.transform, None, batch_size, device)
        parts.append(np.concatenate(feats))
    detector = fit(
        parts[0],
        fit_labels,
        num_classes,
        parts[1],
        info={
            "fitted_on": f"{len(fit_idx)} images of the run's training split",
            "calibrated_on": f"{len(held_idx)} images of the {note}",
            "degraded": degraded,
            "checkpoint": checkpoint,
            "checkpoint_stamp": stamp,
        },
    )
    # a read-only run still predicts; the detector is fitted again next time
    with suppress(OSError, DeepLenseError):
        detector.save(path)
    return detector, ""


def ood_metrics(
    scores: np.ndarray, threshold: float, predicted: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """What ``evaluate`` reports about the flag: how many, and the accuracy on each side."""
    flagged = np.asarray(scores) > threshold
    right = np.asarray(predicted) == np.asarray(labels)

    def accuracy(rows: np.ndarray) -> float | None:
        return float(right[rows].mean()) if rows.any() else None

    return {
        "method": METHOD,
        "threshold": float(threshold),
        "flagged": int(flagged.sum()),
        "flagged_fraction": float(flagged.mean()) if len(flagged) else 0.0,
        "accuracy_in_distribution": accuracy(~flagged),
        "accuracy_flagged": accuracy(flagged),
    }


def explanation(source: str | os.PathLike[str]) -> str:
    """What a flag means and what to do; ``source`` is what ``train --init`` would take."""
    return EXPLANATION.format(source=source)
