"""How a search runs: :class:`TuneSettings` (everything but the base config and the space)."""

from __future__ import annotations

from dataclasses import dataclass

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.training.defaults import METRICS, TRAIN_DEFAULTS


@dataclass
class TuneSettings:
    """How the search runs (everything but the base config and the space)."""

    num_samples: int = 16
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: float = 2.0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 per trial when the cluster has GPUs, else 0
    time_budget_s: float | None = None
    metric: str = TRAIN_DEFAULTS["early_stopping_metric"]
    seed: int = 0  # seed of the search (the sampled configurations)
    default_trial: bool = True  # trial 1 tries the base config's values (those in the space)

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def validate(self) -> None:
        if self.metric not in METRICS:
            raise DeepLenseError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if self.num_samples < 1:
            raise DeepLenseError(f"--num-samples must be 1 or more, got {self.num_samples}")
        if self.max_epochs < 1:
            raise DeepLenseError(f"--max-epochs must be 1 or more, got {self.max_epochs}")
        if not 1 <= self.grace_period <= self.max_epochs:
            raise DeepLenseError(
                f"--grace-period must be between 1 and --max-epochs ({self.max_epochs}), "
                f"got {self.grace_period}"
            )
        if self.reduction_factor <= 1:
            raise DeepLenseError(
                f"--reduction-factor must be greater than 1, got {self.reduction_factor}"
            )
        if self.cpus_per_trial <= 0:
            raise DeepLenseError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise DeepLenseError(f"--gpus-per-trial must be 0 or more, got {self.gpus_per_trial}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise DeepLenseError("--time-budget must be positive")
        check_number("--seed", self.seed, 0, integer=True)
