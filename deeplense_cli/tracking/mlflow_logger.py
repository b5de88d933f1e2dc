"""The ``mlflow`` logger: one MLflow run per deeplense run, in the experiment named by
``tracking.experiment`` ("deeplense"; a search's name for its trials).

The store is ``MLFLOW_TRACKING_URI`` when set, else a local SQLite file,
``$DEEPLENSE_HOME/mlflow.db``, with artifacts beside it in ``mlartifacts/``: no server
needed (MLflow 3 no longer writes its old ``mlruns`` folder store). Parameters are the
flattened resolved config, metrics are logged per epoch with ``step=epoch``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deeplense_cli.core import paths
from deeplense_cli.core.logs import quieted
from deeplense_cli.core.version import __version__
from deeplense_cli.tracking.base import RunInfo, flatten_config

MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
BATCH = 100  # parameters per log_batch call (MLflow's limit)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.home() / 'mlflow.db'}"


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Trials starting together must not both create the SQLite tables or the experiment."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # MLflow announces each table it creates in a new store at INFO level
        with quieted(("mlflow.store.db.utils", "alembic"), logging.WARNING):
            yield


def _param(value: Any) -> str:
    return str(value)[:MAX_PARAM_LENGTH]


class MlflowLogger:
    def __init__(self) -> None:
        self.client: Any = None
        self.run_id = ""
        self.attached = False

    def start(self, info: RunInfo) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        record = info.record or {}
        self.attached = info.mode == "attach"
        # A server that is down should cost seconds, not MLflow's minutes of retries, before
        # the logger gives up and training goes on without it (the user's settings win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # a run continues in the store it started in, whatever the environment says now
        uri = str(record.get("tracking_uri") or tracking_uri())
        with _store_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            if info.mode != "new" and record.get("run_id"):
                self.run_id = str(record["run_id"])
                experiment_id = self.client.get_run(self.run_id).info.experiment_id
            else:
                experiment_id = self._experiment(info.experiment, uri)
                run = self.client.create_run(
                    experiment_id,
                    run_name=info.name,
                    tags={
                        "deeplense.run_dir": str(info.path),
                        "deeplense.model": str(info.config.get("model", {}).get("name")),
                        "deeplense.version": __version__,
                    },
                )
                self.run_id = run.info.run_id
        if info.mode == "resume":
            self.client.update_run(self.run_id, status="RUNNING")
        if info.mode != "attach":
            # a resumed run keeps its first values (MLflow refuses changed parameters)
            have = self.client.get_run(self.run_id).data.params if info.mode == "resume" else {}
            params = [
                Param(k, _param(v)) for k, v in flatten_config(info.config).items() if k not in have
            ]
            for i in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        return {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id}

    def _experiment(self, name: str, uri: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        db = _sqlite_file(uri)
        if db is not None:
            # MLflow would put the files in ./mlartifacts of whatever folder training ran in
            safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
            location = (db.resolve().parent / "mlartifacts" / safe).as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, epoch)

    def log_test(self, metrics: dict[str, float]) -> None:
        self._metrics(metrics, 0)

    def log_artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def finish(self, status: str) -> None:
        if not self.attached:  # a later export leaves the run's status and end time alone
            self.client.set_terminated(self.run_id, status.upper())
