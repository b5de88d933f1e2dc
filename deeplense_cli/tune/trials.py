"""Trials: each one a ``deeplense train`` run inside a Ray worker, reporting every epoch
(metrics and its ``last`` checkpoint) to Ray Tune; and the trial events sent to the driver."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from deeplense_cli.core import atomic, paths
from deeplense_cli.data.splits import load_splits
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training.loop import init_run, train
from deeplense_cli.tune.settings import TuneSettings
from deeplense_cli.tune.space import trial_config

# Where the trackers' records go; a Ray cluster's workers and SLURM jobs do not share our
# environment. Never credentials: this environment is pickled to disk with the search.
TRACKER_ENV = ("MLFLOW_TRACKING_URI", "WANDB_MODE", "WANDB_DIR", "WANDB_ENTITY", "WANDB_BASE_URL")


class RayReporter:
    """Hands each epoch to Ray Tune: its metrics and the run's ``last`` checkpoint."""

    def __init__(self, run_path: Path) -> None:
        self.run_path = Path(run_path)

    def start(self, info: dict[str, Any]) -> None:
        pass

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        from ray import tune

        metrics = {
            k: v
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "best"
        }
        # The checkpoint is a folder holding a hard link to last.pt (written just before this
        # call); Ray copies it into the experiment, after which the folder is removed.
        stage = self.run_path / ".ray-checkpoint"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        last = self.run_path / "checkpoints" / "last.pt"
        try:
            os.link(last, stage / "last.pt")
        except OSError:
            shutil.copy2(last, stage / "last.pt")
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(stage)))
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def end(self, summary: dict[str, Any]) -> None:
        pass


def _run_trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    runs_dir: str,
    env: dict[str, str],
    threads: int,
    search: str | None = None,
) -> None:
    """One trial (runs in a Ray worker): resume from Ray's checkpoint or start a new run."""
    os.environ.update(env)
    from ray import tune

    config = trial_config(base, params)
    config["train"]["num_threads"] = threads
    if search and not config["tracking"]["experiment"]:
        config["tracking"]["experiment"] = search  # the trials' tracker runs, grouped
    run = RunDir(Path(runs_dir) / tune.get_context().get_trial_id())
    splits = load_splits(config)  # opens the cache the driver built
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        run.path.mkdir(parents=True, exist_ok=True)
        init_run(config, run, splits)
        with (
            checkpoint.as_directory() as folder,
            atomic.atomic_path(run.checkpoint_path("last")) as tmp,
        ):
            shutil.copyfile(Path(folder) / "last.pt", tmp)
        resume = True
    elif run.checkpoint_path("last").exists():
        # Ray registers a reported checkpoint in a separate step after the result: a search
        # interrupted in between (Ctrl+C, preemption) restores the trial without one. The
        # run's own last checkpoint (written atomically before the report) is as good.
        init_run(config, run, splits)
        resume = True
    else:
        shutil.rmtree(run.path, ignore_errors=True)  # a restart without checkpoint starts over
        run.path.mkdir(parents=True)
        resume = False
    train(config, run, reporter=RayReporter(run.path), resume=resume, evaluate=False, splits=splits)


def trial_dirname(trial: Any) -> str:
    """Ray's folder of a trial in the experiment, ``trial_<id>``."""
    return f"trial_{trial.trial_id}"


_listener: Callable[[dict[str, Any]], None] | None = None


@contextlib.contextmanager
def listening(on_event: Callable[[dict[str, Any]], None] | None) -> Iterator[None]:
    """Send the trial events of the search run in this block to ``on_event``."""
    global _listener
    _listener = on_event
    try:
        yield
    finally:
        _listener = None


def progress_callback() -> Any:
    """A Ray callback that sends each trial's results, completion and error to the listener."""
    from ray import tune

    class Progress(tune.Callback):
        """Forwards trial events to the listener of this process (kept out of the pickle)."""

        def _emit(self, event: dict[str, Any]) -> None:
            # Looked up at call time: this class is pickled by value into tuner.pkl, and a
            # restored experiment must reach the listener of the process that restores it.
            import deeplense_cli.tune.trials as this

            if this._listener is not None:
                this._listener(event)

        def on_trial_result(
            self, iteration: int, trials: Any, trial: Any, result: Any, **info: Any
        ) -> None:
            self._emit({"event": "result", "trial": trial.trial_id, **_scalars(result)})

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self._emit({"event": "complete", "trial": trial.trial_id})

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self._emit({"event": "error", "trial": trial.trial_id})

    return Progress()


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_auc", "train_seconds")
    return {k: result[k] for k in keys if k in result}


def env_for_trials() -> dict[str, str]:
    """The environment a trial (or a batch job) needs to find the same homes and plugins."""
    env = {
        "DEEPLENSE_HOME": str(paths.home()),
        "DEEPLENSE_DATA_ROOT": str(paths.data_root()),
        "DEEPLENSE_RUN_ROOT": str(paths.run_root()),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    if os.environ.get("DEEPLENSE_BLOCK_PLUGINS"):
        env["DEEPLENSE_BLOCK_PLUGINS"] = os.environ["DEEPLENSE_BLOCK_PLUGINS"]
    env.update({k: os.environ[k] for k in TRACKER_ENV if os.environ.get(k)})
    return env


def trainable(state: dict[str, Any], exp: Path) -> Any:
    """The Ray trainable of an experiment (from its saved state), with each trial's resources."""
    from ray import tune

    settings = TuneSettings(**state["settings"])
    threads = max(1, int(settings.cpus_per_trial))
    fn = tune.with_parameters(
        _run_trial,
        base=state["config"],
        runs_dir=str(exp / "runs"),
        env=env_for_trials(),
        threads=threads,
        search=str(state["name"]),
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": float(state["gpus_per_trial"])}
    return tune.with_resources(fn, resources)
