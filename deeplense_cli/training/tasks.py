"""The training side of ``train.task``: the data, target, loss and validation figures of an
axion-mass regressor (``--task axion-mass``); a classifier keeps the loop's own.

The regressor is the architecture's own model built with one output (``num_classes=1``),
trained on the images that carry an axion mass to predict ``(log10 m - mean) / std`` with
the training images' mean and std (``train.target_scaling``), under ``train.regression_loss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.targets import log10_mass, mass_only
from deeplense_cli.evaluation.regression import regression_metrics
from deeplense_cli.runs.task import AXION_MASS, TargetScaling, is_regression, task_of

if TYPE_CHECKING:
    import torch

    from deeplense_cli.data.imageset import ImageSet
    from deeplense_cli.data.splits import Splits


def task_splits(config: dict[str, Any], splits: Splits) -> Splits:
    """The splits the run's task trains on: a regressor's hold only images with a mass (one
    axion folder is enough); a classifier needs two classes or more."""
    if is_regression(task_of(config)):
        return mass_only(splits)
    if len(splits.classes) < 2:
        raise DeepLenseError(
            f"{splits.train.root} has a single class ({splits.classes[0]}); a classifier needs "
            "at least two class folders (--task axion-mass trains on an axion folder alone)"
        )
    return splits


def fit_scaling(config: dict[str, Any], splits: Splits) -> TargetScaling:
    """The target scaling from the training images' log-masses (``none``: identity)."""
    y = log10_mass(splits.train, splits.train_idx)
    y = y[np.isfinite(y)]
    mean = float(np.mean(y))
    if config["train"].get("target_scaling", "standardize") == "none":
        return TargetScaling(baseline=mean)
    std = float(np.std(y))
    return TargetScaling(mean=mean, std=std if std > 1e-12 else 1.0, baseline=mean)


def target_record(config: dict[str, Any], splits: Splits) -> dict[str, Any] | None:
    """``target.json`` of a new run (None for a classifier)."""
    if not is_regression(task_of(config)):
        return None
    record = fit_scaling(config, splits).record()
    record["scaling"] = config["train"].get("target_scaling", "standardize")
    record["loss"] = config["train"].get("regression_loss", "huber")
    return record


class Regression:
    """A regressor's targets, loss and validation figures for the training loop."""

    task = AXION_MASS

    def __init__(self, loss: str, scaling: TargetScaling, device: torch.device) -> None:
        import torch

        self.scaling, self.device = scaling, device
        losses = {
            "huber": torch.nn.HuberLoss,
            "mse": torch.nn.MSELoss,
            "l1": torch.nn.L1Loss,
        }
        self._mean, self._sum = losses[loss](), losses[loss](reduction="sum")

    def targets(self, images: ImageSet, idx: np.ndarray) -> torch.Tensor:
        """The standardised targets of ``images[idx]`` (float32, on the device)."""
        import torch

        y = self.scaling.to_output(log10_mass(images, idx)).astype(np.float32)
        return torch.from_numpy(y).to(self.device)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._mean(out[:, 0].float(), y)

    def loss_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._sum(out[:, 0].float(), y)

    def score(
        self, split: str, outputs: np.ndarray, images: ImageSet, idx: np.ndarray
    ) -> dict[str, Any]:
        """``{split}_loss`` (on the standardised target), ``_mae``, ``_rmse`` (dex), ``_r2``."""
        import torch

        truth = log10_mass(images, idx)
        out = torch.from_numpy(outputs[:, 0].astype(np.float32))
        y = torch.from_numpy(self.scaling.to_output(truth).astype(np.float32))
        m = regression_metrics(truth, self.scaling.to_log10_mass(outputs[:, 0].astype(np.float64)))
        return {
            f"{split}_loss": float(self._mean(out, y)),
            f"{split}_mae": m["mae"],
            f"{split}_rmse": m["rmse"],
            f"{split}_r2": m["r2"],
        }
