"""Experiment tracking: the runs of ``deeplense train --log tensorboard,mlflow`` (and of
tune trials and SLURM jobs, whose configs carry ``tracking.loggers``) recorded in trackers.

* :mod:`~deeplense_cli.tracking.base` -- the ``Logger`` protocol and ``RunInfo``
* :mod:`~deeplense_cli.tracking.session` -- choosing and checking loggers, the reporter that
  feeds them from the training loop, ``RUN/tracking.json``, files added after training
* :mod:`~deeplense_cli.tracking.tensorboard_logger`, :mod:`~deeplense_cli.tracking.mlflow_logger`
  -- the built-in loggers, registered by :mod:`~deeplense_cli.tracking.builtin` through the
  ``register_loggers`` hook as a plugin's would be

May import ``core``, ``registry`` and ``runs``; ``evaluation``, ``training`` and ``deploy``
build on it. No click or rich here; the tracking libraries are imported inside the loggers.
"""

from typing import TYPE_CHECKING

from deeplense_cli.core.lazy import exports

if TYPE_CHECKING:
    from deeplense_cli.tracking.base import STATUSES, Logger, RunInfo, flatten_config, scalars
    from deeplense_cli.tracking.session import (
        RECORD_FILE,
        Tracker,
        TrackingReporter,
        add_artifacts,
        check_loggers,
        config_loggers,
        logger_names,
        read_record,
        tracked,
    )

# Imported on first use: the built-in loggers are a plugin that `deeplense --help` loads, and
# they need only tracking.base, not the session (run folders, YAML).
__getattr__ = exports(
    __name__,
    {
        **{name: f"base:{name}" for name in ("STATUSES", "Logger", "RunInfo")},
        **{name: f"base:{name}" for name in ("flatten_config", "scalars")},
        **{
            name: f"session:{name}"
            for name in (
                "RECORD_FILE",
                "Tracker",
                "TrackingReporter",
                "add_artifacts",
                "check_loggers",
                "config_loggers",
                "logger_names",
                "read_record",
                "tracked",
            )
        },
    },
)

__all__ = [
    "RECORD_FILE",
    "STATUSES",
    "Logger",
    "RunInfo",
    "Tracker",
    "TrackingReporter",
    "add_artifacts",
    "check_loggers",
    "config_loggers",
    "flatten_config",
    "logger_names",
    "read_record",
    "scalars",
    "tracked",
]
