"""What a run learns: the substructure class (``classify``) or the axion mass (``axion-mass``).

A regression run's target is log10 of the axion mass in eV, standardised with the training
images' mean and standard deviation (``target.json`` in the run, ``deeplense.target`` in an
export), so the model's one output is ``(log10 m - mean) / std``. NumPy-free and torch-free:
the ONNX predictor reads it too.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from deeplense_cli.core.errors import DeepLenseError

CLASSIFY = "classify"
AXION_MASS = "axion-mass"
TASKS = (CLASSIFY, AXION_MASS)
TARGET_NAME = "log10_axion_mass"  # what a regressor predicts, in log10(eV)
REGRESSION_LOSSES = ("huber", "mse", "l1")
TARGET_SCALINGS = ("standardize", "none")


def task_of(config: dict[str, Any] | None) -> str:
    """The task of a resolved config (runs written before tasks existed classify)."""
    task = ((config or {}).get("train") or {}).get("task") or CLASSIFY
    if task not in TASKS:
        raise DeepLenseError(f"train.task must be one of {', '.join(TASKS)}, got {task!r}")
    return str(task)


def is_regression(task: str) -> bool:
    return task == AXION_MASS


def num_outputs(task: str, classes: list[str]) -> int:
    """The model's outputs: one per class, or one for a regressor (``num_classes=1`` through
    the architecture's factory, the same head)."""
    return 1 if is_regression(task) else len(classes)


def head_names(config: dict[str, Any] | None, classes: list[str]) -> list[str]:
    """What the model's outputs are: the classes, or the regressor's one target (so that
    ``train.init`` from a classifier rebuilds its head with one output, and from a regressor
    keeps it)."""
    return [TARGET_NAME] if is_regression(task_of(config)) else list(classes)


@dataclass(frozen=True)
class TargetScaling:
    """``output = (log10 m - mean) / std``: a regressor's output in mass units and back."""

    mean: float = 0.0
    std: float = 1.0
    name: str = TARGET_NAME
    unit: str = "log10(eV)"
    # the training images' mean log10 m: what predicting the mean predicts (the baseline
    # evaluate reports), whatever the scaling
    baseline: float | None = None

    @property
    def mean_prediction(self) -> float:
        return self.mean if self.baseline is None else self.baseline

    def to_log10_mass(self, output: Any) -> Any:
        return output * self.std + self.mean

    def to_output(self, log10_mass: Any) -> Any:
        return (log10_mass - self.mean) / self.std

    def record(self) -> dict[str, Any]:
        return {"task": AXION_MASS, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TargetScaling:
        try:
            scaling = cls(
                mean=float(record["mean"]),
                std=float(record["std"]),
                name=str(record.get("name", TARGET_NAME)),
                unit=str(record.get("unit", "log10(eV)")),
                baseline=None if record.get("baseline") is None else float(record["baseline"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeepLenseError(f"broken target scaling {record!r}: {exc}") from None
        if not (math.isfinite(scaling.mean) and math.isfinite(scaling.std) and scaling.std > 0):
            raise DeepLenseError(f"broken target scaling {record!r}: std must be positive")
        return scaling

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: Any) -> TargetScaling | None:
        """The scaling an export's metadata carries (None: a classifier's file)."""
        task = meta.get("deeplense.task", CLASSIFY)
        if task == CLASSIFY:
            return None
        if task != AXION_MASS:
            raise DeepLenseError(
                f"{where} is a {task} model, which this deeplense cannot run; upgrade deeplense"
            )
        try:
            record = json.loads(meta["deeplense.target"])
        except (KeyError, ValueError):
            raise DeepLenseError(
                f"{where} is an axion-mass model without valid deeplense.target metadata; "
                "re-export it"
            ) from None
        return cls.from_record(record)
