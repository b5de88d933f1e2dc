"""Hyper-parameter search with Ray Tune and the ASHA scheduler.

Every trial runs :func:`deeplense_cli.training.loop.train` (the loop behind ``deeplense train``)
with a reporter that hands each epoch's validation metrics and its ``last`` checkpoint to
``ray.tune.report``; ASHA stops the trials that fall behind at each rung. There is no second
training loop.

* :mod:`~deeplense_cli.tune.settings` -- how a search runs (``TuneSettings``)
* :mod:`~deeplense_cli.tune.space` -- search spaces: the plugins' ``tune_space`` and ``--space``
* :mod:`~deeplense_cli.tune.runtime` -- the Ray runtime and its resources
* :mod:`~deeplense_cli.tune.trials` -- one trial, its reporter and the trial events
* :mod:`~deeplense_cli.tune.layout` -- an experiment's folder and saved state
* :mod:`~deeplense_cli.tune.experiment` -- ``run_tune`` and ``resume_tune``
* :mod:`~deeplense_cli.tune.results` -- trial summaries, the best config, learning curves

May import training/ and the packages below it, never cluster/ or commands/.
"""

from typing import TYPE_CHECKING

from deeplense_cli.core.lazy import exports

if TYPE_CHECKING:
    from deeplense_cli.tune.experiment import resume_tune, run_tune
    from deeplense_cli.tune.layout import (
        STATE_FILE,
        default_name,
        experiment_dir,
        new_experiment_dir,
        read_state,
    )
    from deeplense_cli.tune.results import summarize
    from deeplense_cli.tune.runtime import ray_temp_dir
    from deeplense_cli.tune.settings import TuneSettings
    from deeplense_cli.tune.space import (
        build_space,
        check_space,
        default_point,
        load_space_file,
        to_ray_space,
        trial_config,
    )
    from deeplense_cli.tune.trials import env_for_trials

# Each name -> "module:attribute", imported on first use: the engine brings in Ray, NumPy and
# the training loop, and `deeplense --help` reads TuneSettings' defaults from tune.settings.
_EXPORTS = {
    "resume_tune": "experiment:resume_tune",
    "run_tune": "experiment:run_tune",
    "STATE_FILE": "layout:STATE_FILE",
    "default_name": "layout:default_name",
    "experiment_dir": "layout:experiment_dir",
    "new_experiment_dir": "layout:new_experiment_dir",
    "read_state": "layout:read_state",
    "summarize": "results:summarize",
    "ray_temp_dir": "runtime:ray_temp_dir",
    "TuneSettings": "settings:TuneSettings",
    "build_space": "space:build_space",
    "check_space": "space:check_space",
    "default_point": "space:default_point",
    "load_space_file": "space:load_space_file",
    "to_ray_space": "space:to_ray_space",
    "trial_config": "space:trial_config",
    "env_for_trials": "trials:env_for_trials",
    # The tuner.pkl of an experiment saved by an earlier deeplense refers to these by this path
    # (its progress callback is pickled by value, the trial folder namer by reference), and that
    # callback reads the listener here at call time (it changes while a search runs): --resume
    # needs them.
    "_scalars": "trials:_scalars",
    "_trial_dirname": "trials:trial_dirname",
    "_listener": "trials:_listener",
}


__getattr__ = exports(__name__, _EXPORTS, live=("_listener",))

__all__ = [
    "STATE_FILE",
    "TuneSettings",
    "build_space",
    "check_space",
    "default_name",
    "default_point",
    "env_for_trials",
    "experiment_dir",
    "load_space_file",
    "new_experiment_dir",
    "ray_temp_dir",
    "read_state",
    "resume_tune",
    "run_tune",
    "summarize",
    "to_ray_space",
    "trial_config",
]
