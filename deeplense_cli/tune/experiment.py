"""Running an experiment: a new ASHA search (:func:`run_tune`) or the rest of an interrupted
one (:func:`resume_tune`), each ending with the summary of its trials."""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.version import __version__
from deeplense_cli.data.splits import load_splits
from deeplense_cli.training.defaults import METRICS
from deeplense_cli.training.tasks import task_splits
from deeplense_cli.tune.layout import (
    STATE_FILE,
    default_name,
    experiment_dir,
    new_experiment_dir,
    read_state,
)
from deeplense_cli.tune.results import TuneOutcome, summarize
from deeplense_cli.tune.runtime import (
    check_resources,
    ctrl_c_stops_search,
    quiet_analysis,
    ray_runtime,
)
from deeplense_cli.tune.settings import TuneSettings
from deeplense_cli.tune.space import (
    check_space,
    corner_points,
    default_point,
    to_ray_space,
    trial_config,
)
from deeplense_cli.tune.trials import listening, progress_callback, trainable, trial_dirname


def prepare_data(config: dict[str, Any]) -> Any:
    """Load (and on first use pack) the dataset once in the driver, so trials only open the
    memory-mapped cache; check the split has a validation set for ASHA to compare on."""
    splits = task_splits(config, load_splits(config))
    if len(splits.val_idx) == 0:
        raise DeepLenseError(
            "the validation split is empty; tuning compares trials on validation metrics "
            "(raise data.val_fraction or use more data)"
        )
    if len(splits.train_idx) == 0:
        raise DeepLenseError("the training split is empty; use more data")
    return splits


def run_tune(
    config: dict[str, Any],
    space: dict[str, Any],
    settings: TuneSettings,
    name: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> TuneOutcome:
    """Run a new ASHA search over ``space`` starting from the resolved ``config``.

    :param config: a resolved config (``deeplense_cli.training.config.resolve``); its
        ``train.epochs`` is replaced by ``settings.max_epochs``.
    :param space: a checked plain-data space (:func:`build_space`).
    :param address: an existing Ray cluster to use; else this process's Ray runtime, or a
        local one started for the search (``num_cpus``: its CPUs, default all).
    :param on_event: called in this process for each trial result, completion and error.
    """
    settings.validate()
    name = name or default_name(config)
    exp = new_experiment_dir(name)
    base = copy.deepcopy(config)
    base.pop("deeplense_version", None)
    base["train"]["epochs"] = int(settings.max_epochs)
    if base["train"].get("max_minutes"):
        # it would re-plan each trial's epochs, and ASHA compares trials epoch by epoch
        raise DeepLenseError(
            "train.max_minutes does not apply to a search; limit it with --time-budget"
        )
    space = check_space(space, base)
    for params in corner_points(space):
        trial_config(base, params)  # a bad value fails here, not in every trial
    prepare_data(base)
    with ray_runtime(address, num_cpus=num_cpus):
        gpus = check_resources(settings)
        state = {
            "format": "deeplense-tune/1",
            "deeplense_version": __version__,
            "name": name,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "config": base,
            "space": space,
            "settings": asdict(settings),
            "gpus_per_trial": gpus,
        }
        exp.mkdir(parents=True, exist_ok=True)
        atomic.write_json(exp / STATE_FILE, state)
        tuner = _new_tuner(state, exp)
        _start_event(on_event, state, exp, resumed=False)
        interrupted = _fit(tuner, on_event)
        outcome = summarize(name)
        outcome.interrupted = interrupted
        return outcome


def _new_tuner(state: dict[str, Any], exp: Path) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    settings = TuneSettings(**state["settings"])
    points = [default_point(state["space"], state["config"])] if settings.default_trial else []
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=int(settings.max_epochs),
        grace_period=int(settings.grace_period),
        reduction_factor=float(settings.reduction_factor),
    )
    return tune.Tuner(
        trainable(state, exp),
        param_space=to_ray_space(state["space"]),
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(
                random_state=int(settings.seed), points_to_evaluate=points or None
            ),
            num_samples=int(settings.num_samples),
            time_budget_s=settings.time_budget_s,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=exp.name,
            storage_path=str(exp.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[progress_callback()],
            verbose=0,
        ),
    )


def _fit(tuner: Any, on_event: Callable[[dict[str, Any]], None] | None) -> bool:
    """Run the search; True when Ctrl+C stopped it (Ray saved its state first)."""
    with listening(on_event), ctrl_c_stops_search() as interrupted:
        tuner.fit()
    return interrupted.is_set()


def resume_tune(
    name: str,
    address: str | None = None,
    num_cpus: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> TuneOutcome:
    """Continue an interrupted experiment: finished trials are kept, unfinished and errored
    trials continue from their last Ray checkpoint, trials not started yet start."""
    from ray import tune

    state = read_state(name)
    exp = experiment_dir(name)
    if not tune.Tuner.can_restore(str(exp)):
        raise DeepLenseError(
            f"{exp} has no Ray Tune state to resume from (tuner.pkl); start a new search"
        )
    prepare_data(state["config"])
    with ray_runtime(address, num_cpus=num_cpus):
        with quiet_analysis():
            tuner = tune.Tuner.restore(
                str(exp),
                trainable=trainable(state, exp),
                resume_unfinished=True,
                resume_errored=True,
            )
        _start_event(on_event, state, exp, resumed=True)
        interrupted = _fit(tuner, on_event)
        outcome = summarize(name)
        outcome.interrupted = interrupted
        return outcome


def _start_event(
    on_event: Callable[[dict[str, Any]], None] | None,
    state: dict[str, Any],
    exp: Path,
    resumed: bool,
) -> None:
    if on_event is None:
        return
    settings = state["settings"]
    on_event(
        {
            "event": "start",
            "name": state["name"],
            "path": str(exp),
            "resumed": resumed,
            "model": state["config"]["model"]["name"],
            "num_samples": settings["num_samples"],
            "max_epochs": settings["max_epochs"],
            "metric": settings["metric"],
            "mode": METRICS[settings["metric"]],
            "gpus_per_trial": state["gpus_per_trial"],
            "cpus_per_trial": settings["cpus_per_trial"],
        }
    )
