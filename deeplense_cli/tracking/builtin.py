"""The built-in loggers, registered through the ``register_loggers`` hook like a third-party
plugin's (entry point ``deeplense_loggers``). Each library is an optional extra."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deeplense_cli.registry.hookspecs import hookimpl
from deeplense_cli.tracking.mlflow_logger import MlflowLogger
from deeplense_cli.tracking.tensorboard_logger import TensorBoardLogger


@hookimpl
def register_loggers(register: Callable[..., Any]) -> None:
    register(
        "tensorboard",
        TensorBoardLogger,
        requires=("tensorboard",),
        install="pip install 'deeplense[tensorboard]'",
    )
    register(
        "mlflow", MlflowLogger, requires=("mlflow",), install="pip install 'deeplense[mlflow]'"
    )
