"""What a logger is: the :class:`Logger` protocol, the :class:`RunInfo` it starts with, and
how a config and a metrics row become flat names and numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

# How a tracked run ended (MLflow's FINISHED / FAILED / KILLED, in lower case).
STATUSES = ("finished", "failed", "killed")

# new: a run's first start; resume: `train --resume` or a restored trial continues the
# same tracker run; attach: a later command (export, evaluate) adds files to a finished one.
Mode = Literal["new", "resume", "attach"]


@dataclass(frozen=True)
class RunInfo:
    """The run a logger records."""

    path: Path  # the run directory
    name: str  # its folder name: the tracker run's name
    experiment: str  # tracking.experiment, or the search name for tune trials
    config: dict[str, Any]  # the resolved config: the tracker run's parameters
    mode: Mode = "new"
    record: dict[str, Any] | None = None  # what this logger's start returned before
    start_epoch: int = 0  # epochs already done (a resumed run)


class Logger(Protocol):
    """An experiment tracker, made by the factory a plugin registers, one per run.

    deeplense calls the methods in this order: ``start``, ``log_epoch`` per epoch, ``log_test``
    and ``log_artifact`` when the run ends, then ``finish``. Every call is guarded: a logger
    that raises is reported once and not called again, and the run goes on without it.
    """

    def start(self, info: RunInfo) -> dict[str, Any] | None:
        """Open (or, with ``info.record``, reopen) the tracker run; log ``info.config`` as its
        parameters on a new run. Returns what reopening it later needs (ids, paths): it is
        saved in ``RUN/tracking.json`` and comes back as ``info.record``."""
        ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's numbers (train_loss, val_loss, val_accuracy, val_macro_auc, lr, ...)."""
        ...

    def log_test(self, metrics: dict[str, float]) -> None:
        """The final test metrics (test_accuracy, test_macro_auc, ...) and best_epoch."""
        ...

    def log_artifact(self, path: Path, folder: str) -> None:
        """A file of the run (config.yaml, the evaluation's metrics.json and figures, an
        export); ``folder`` is where it lies in the run directory ("" for the top)."""
        ...

    def finish(self, status: str) -> None:
        """Close the tracker run with one of :data:`STATUSES`."""
        ...


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics row, nested ones as ``key/sub`` (``val_auc/cdm``);
    flags (``best``) and missing values are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[f"{prefix}{key}"] = float(value)
    return out
