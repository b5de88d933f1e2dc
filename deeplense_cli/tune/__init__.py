"""Hyper-parameter search with Ray Tune and the ASHA scheduler.

Every trial runs :func:`deeplense_cli.training.loop.train` (the loop behind ``deeplense train``) with a
reporter that hands each epoch's validation metrics and its ``last`` checkpoint to
``ray.tune.report``; ASHA stops the trials that fall behind at each rung. There is no
second training loop.

Search spaces are plain data, registered by each architecture plugin as ``tune_space``::

    {"lr": {"type": "loguniform", "low": 1e-5, "high": 2e-3},
     "batch_size": {"type": "choice", "values": [32, 64, 128]},
     "model.depth": {"type": "choice", "values": [2, 3, 5]}}

``model.<name>`` keys are model hyper-parameters, other keys (or ``train.<name>``) training
settings; types are ``loguniform``, ``uniform`` (``low``/``high``), ``randint`` (``low``
inclusive, ``high`` exclusive) and ``choice`` (``values``). A YAML file in the same format
(``--space``) overrides or extends it; a key set to ``null`` removes that dimension.

Layout of an experiment, ``run_root()/tune/NAME``::

    tune.json            the settings, base config and space (used by --resume)
    tuner.pkl, experiment_state-*.json, trial_<id>/   Ray Tune's own files and checkpoints
    runs/<trial id>/     each trial's deeplense run directory (config, metrics, checkpoints)
    trials.json          one summary row per trial
    best_config.yaml     the best trial's full config: a valid ``deeplense train --config``
    learning_curves.png  the metric against the epoch, one line per trial
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deeplense_cli import __version__
from deeplense_cli.core import atomic, paths, yamlio
from deeplense_cli.core.errors import DeepLenseError

METRIC_MODES = {"val_macro_auc": "max", "val_accuracy": "max", "val_loss": "min"}
SPACE_TYPES = ("loguniform", "uniform", "randint", "choice")
# Training settings a search may not vary: the epoch budget is --max-epochs (ASHA's max_t);
# the others describe where and how a trial runs, not what it learns.
FIXED_TRAIN_KEYS = (
    "epochs",
    "max_minutes",
    "device",
    "num_threads",
    "eval_batch_size",
    "early_stopping_metric",
)
STATE_FILE = "tune.json"
BEST_CONFIG = "best_config.yaml"
PLOT_FILE = "learning_curves.png"
TRIALS_FILE = "trials.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


# --------------------------------------------------------------------------- settings


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
    metric: str = "val_macro_auc"
    seed: int = 0  # seed of the search (the sampled configurations)
    default_trial: bool = True  # trial 1 tries the base config's values (those in the space)

    @property
    def mode(self) -> str:
        return METRIC_MODES[self.metric]

    def validate(self) -> None:
        if self.metric not in METRIC_MODES:
            raise DeepLenseError(
                f"unknown metric {self.metric!r}; use one of {', '.join(METRIC_MODES)}"
            )
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


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h``, ``1h30m``, ``1d`` or ``HH:MM:SS``."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}", s):
        parts = [int(p) for p in s.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    if s and re.fullmatch(r"(\d+(\.\d+)?[dhms])+", s):
        return float(
            sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([dhms])", s))
        )
    raise DeepLenseError(f"cannot read duration {text!r}; use e.g. 90s, 30m, 2h, 1h30m or HH:MM:SS")


# --------------------------------------------------------------------------- search spaces


def load_space_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``--space`` YAML file (the plain-data format described in this module)."""
    p = Path(path)
    try:
        raw = yamlio.load(p.read_text())
    except OSError as exc:
        raise DeepLenseError(f"cannot read space file {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid YAML"
        raise DeepLenseError(f"space file {p} is not valid YAML: {first}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DeepLenseError(
            f"space file {p} must map setting names to dimensions, e.g. "
            "'lr: {type: loguniform, low: 1e-5, high: 1e-3}'"
        )
    return raw


def _check_dimension(key: str, spec: Any, where: str) -> dict[str, Any]:
    hint = "e.g. {type: loguniform, low: 1e-5, high: 1e-3} or {type: choice, values: [32, 64]}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise DeepLenseError(f"{where}: {key!r} must be a mapping with a 'type' ({hint})")
    kind = spec["type"]
    if kind not in SPACE_TYPES:
        raise DeepLenseError(
            f"{where}: {key!r} has unknown type {kind!r}; use one of {', '.join(SPACE_TYPES)}"
        )
    allowed = {"type", "values"} if kind == "choice" else {"type", "low", "high"}
    extra = set(spec) - allowed
    if extra:
        raise DeepLenseError(
            f"{where}: {key!r} ({kind}) has unknown field(s) {', '.join(sorted(extra))}; "
            f"expected {', '.join(sorted(allowed))}"
        )
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise DeepLenseError(f"{where}: {key!r} (choice) needs a non-empty list 'values'")
        return {"type": kind, "values": list(values)}
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers:
        raise DeepLenseError(f"{where}: {key!r} ({kind}) needs numeric 'low' and 'high'")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    if not low < high:
        raise DeepLenseError(f"{where}: {key!r} ({kind}) needs low < high, got {low} and {high}")
    if kind == "loguniform" and low <= 0:
        raise DeepLenseError(f"{where}: {key!r} (loguniform) needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise DeepLenseError(f"{where}: {key!r} (randint) needs integer low and high")
    if kind == "randint":
        return {"type": kind, "low": int(low), "high": int(high)}
    return {"type": kind, "low": float(low), "high": float(high)}


def _canonical_key(key: str, config: dict[str, Any], where: str) -> str:
    """``model.x`` stays, ``train.x`` and bare ``x`` become ``x`` (a training setting)."""
    model = config["model"]["name"]
    params = config["model"]["params"]
    train = config["train"]
    section, dot, sub = str(key).partition(".")
    if dot and section == "model":
        if sub not in params:
            raise DeepLenseError(
                f"{where}: {key!r} is not a {model} hyper-parameter; "
                f"known: {', '.join('model.' + k for k in sorted(params))}"
            )
        return key
    name = sub if dot and section == "train" else key
    if dot and section != "train":
        raise DeepLenseError(
            f"{where}: {key!r} cannot be tuned; use model.<hyper-parameter> or a training "
            f"setting ({', '.join(sorted(train))})"
        )
    if name not in train:
        raise DeepLenseError(
            f"{where}: unknown setting {key!r}; use model.<hyper-parameter> "
            f"({', '.join(sorted(params))}) or a training setting ({', '.join(sorted(train))})"
        )
    if name in FIXED_TRAIN_KEYS:
        reason = "set it with --max-epochs" if name == "epochs" else "it is fixed for a search"
        raise DeepLenseError(f"{where}: {key!r} cannot be tuned ({reason})")
    return name


def check_space(
    space: dict[str, Any], config: dict[str, Any], where: str = "search space"
) -> dict[str, Any]:
    """Check every key and dimension of a plain-data space against a resolved ``config``;
    return it with canonical keys (``train.lr`` -> ``lr``)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        out[_canonical_key(str(key), config, where)] = _check_dimension(str(key), spec, where)
    if not out:
        raise DeepLenseError(
            f"the search space for {config['model']['name']} is empty; "
            "give dimensions with --space FILE"
        )
    return out


def build_space(config: dict[str, Any], override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture's ``tune_space`` updated by ``override`` (a ``--space`` file; ``None``
    values remove a dimension), checked against ``config`` (a resolved config)."""
    from deeplense_cli.registry.manager import get_architecture

    arch = get_architecture(config["model"]["name"])
    space = check_space(
        dict(arch.tune_space), config, f"{arch.name} tune_space (plugin {arch.plugin or '?'})"
    )
    for key, spec in (override or {}).items():
        canon = _canonical_key(str(key), config, "--space")
        if spec is None:
            space.pop(canon, None)
        else:
            space[canon] = _check_dimension(str(key), spec, "--space")
    return check_space(space, config, "--space")


def default_point(space: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The base config's value of each dimension that lies inside the space: the first trial,
    so a search always weighs the defaults against what it samples."""
    point: dict[str, Any] = {}
    for key, spec in space.items():
        if key.startswith("model."):
            value = config["model"]["params"].get(key[6:])
        else:
            value = config["train"].get(key)
        if spec["type"] == "choice":
            if value in spec["values"]:
                point[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if spec["type"] == "randint":
                inside = float(value).is_integer() and spec["low"] <= value < spec["high"]
            else:
                inside = spec["low"] <= value <= spec["high"]
            if inside:
                point[key] = value
    return point


def to_ray_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune sampling objects for a checked plain-data space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "uniform":
            out[key] = tune.uniform(spec["low"], spec["high"])
        else:
            out[key] = tune.randint(int(spec["low"]), int(spec["high"]))
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a resolved config) with a trial's sampled values, resolved and checked again."""
    from deeplense_cli.runs.config import resolve

    overrides = {(k if k.startswith("model.") else f"train.{k}"): v for k, v in params.items()}
    return resolve(copy.deepcopy(base), {}, overrides)


# --------------------------------------------------------------------------- Ray runtime


def ray_temp_dir() -> str:
    """A short session directory: Ray's Unix sockets live there and are capped at 107 bytes."""
    return f"/tmp/ray-dl-{os.getuid()}"


@contextlib.contextmanager
def ray_runtime(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[None]:
    """Use the Ray runtime this process already has, or connect/start one for the block."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # One small checkpoint per epoch is how deeplense trials work; Ray would warn each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's newer console output prints its own banner even at verbose=0; deeplense prints
    # progress itself (on_event) and the final table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        _check_reachable(address)
        # A cluster's own settings stand; trials' checkpoints and deeplense runs are written
        # under the run root, which every node must share (Ray no longer syncs trial files).
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeepLenseError(
                f"cannot connect to the Ray cluster at {address}: {first}; is "
                "`ray start --head` running there?"
            ) from None
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _temp_dir=ray_temp_dir(),
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nobody listens at (Ray itself retries for minutes)."""
    import socket

    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise DeepLenseError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DeepLenseError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is "
            "`ray start --head` running there?"
        ) from None


# --------------------------------------------------------------------------- trials


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
) -> None:
    """One trial (runs in a Ray worker): resume from Ray's checkpoint or start a new run."""
    os.environ.update(env)
    from ray import tune

    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.training.loop import init_run, load_splits, train

    config = trial_config(base, params)
    config["train"]["num_threads"] = threads
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


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


_listener: Callable[[dict[str, Any]], None] | None = None


def _progress_callback() -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """Forwards trial events to the listener of this process (kept out of the pickle)."""

        def _emit(self, event: dict[str, Any]) -> None:
            # Looked up at call time: this class is pickled by value into tuner.pkl, and a
            # restored experiment must reach the listener of the process that restores it.
            import deeplense_cli.tune as engine

            if engine._listener is not None:
                engine._listener(event)

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


# --------------------------------------------------------------------------- experiments


def experiment_dir(name: str) -> Path:
    if not _NAME_RE.match(name):
        raise DeepLenseError(
            f"invalid experiment name {name!r}; use letters, digits, '.', '_' and '-'"
        )
    return paths.run_root() / "tune" / name


def default_name(config: dict[str, Any]) -> str:
    data = config["data"]
    dataset = data.get("dataset") or (Path(str(data.get("data") or "data")).name or "data")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{config['model']['name'].lower()}-{dataset}-{stamp}")


@dataclass
class TrialSummary:
    trial_id: str
    params: dict[str, Any]
    status: str  # completed, stopped (by ASHA), error, pending, interrupted
    epochs: int
    best_value: float | None
    best_epoch: int | None
    run_dir: str
    error: str | None = None
    curve: list[float | None] = field(default_factory=list)


@dataclass
class TuneOutcome:
    name: str
    path: Path
    metric: str
    mode: str
    max_epochs: int
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config_path: Path | None
    plot_path: Path | None
    finished: bool  # False: interrupted or out of time budget; --resume NAME continues


def _env_for_trials() -> dict[str, str]:
    env = {
        "DEEPLENSE_HOME": str(paths.home()),
        "DEEPLENSE_DATA_ROOT": str(paths.data_root()),
        "DEEPLENSE_RUN_ROOT": str(paths.run_root()),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    if os.environ.get("DEEPLENSE_BLOCK_PLUGINS"):
        env["DEEPLENSE_BLOCK_PLUGINS"] = os.environ["DEEPLENSE_BLOCK_PLUGINS"]
    return env


def _trainable(state: dict[str, Any], exp: Path) -> Any:
    from ray import tune

    settings = TuneSettings(**state["settings"])
    threads = max(1, int(settings.cpus_per_trial))
    fn = tune.with_parameters(
        _run_trial,
        base=state["config"],
        runs_dir=str(exp / "runs"),
        env=_env_for_trials(),
        threads=threads,
    )
    resources = {"cpu": settings.cpus_per_trial, "gpu": float(state["gpus_per_trial"])}
    return tune.with_resources(fn, resources)


def _check_resources(settings: TuneSettings) -> float:
    import ray

    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if settings.cpus_per_trial > cpus:
        raise DeepLenseError(
            f"--cpus-per-trial {settings.cpus_per_trial:g} is more than the Ray cluster has "
            f"({cpus:g} CPUs)"
        )
    if settings.gpus_per_trial is None:
        return 1.0 if gpus >= 1 else 0.0
    if settings.gpus_per_trial > gpus:
        raise DeepLenseError(
            f"--gpus-per-trial {settings.gpus_per_trial:g} but the Ray cluster has "
            f"{gpus:g} GPUs; use --gpus-per-trial 0 to train on CPUs"
        )
    return float(settings.gpus_per_trial)


def prepare_data(config: dict[str, Any]) -> Any:
    """Load (and on first use pack) the dataset once in the driver, so trials only open the
    memory-mapped cache; check the split has a validation set for ASHA to compare on."""
    from deeplense_cli.training.loop import load_splits

    splits = load_splits(config)
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

    :param config: a resolved config (``deeplense_cli.runs.config.resolve``); its ``train.epochs``
        is replaced by ``settings.max_epochs``.
    :param space: a checked plain-data space (:func:`build_space`).
    :param address: an existing Ray cluster to use; else this process's Ray runtime, or a
        local one started for the search (``num_cpus``: its CPUs, default all).
    :param on_event: called in this process for each trial result, completion and error.
    """
    settings.validate()
    name = name or default_name(config)
    exp = experiment_dir(name)
    if (exp / STATE_FILE).exists():
        raise DeepLenseError(
            f"tune experiment {name!r} already exists at {exp}; continue it with "
            f"`deeplense tune --resume {name}` or choose another --name"
        )
    base = copy.deepcopy(config)
    base.pop("deeplense_version", None)
    base["train"]["epochs"] = int(settings.max_epochs)
    if base["train"].get("max_minutes"):
        # it would re-plan each trial's epochs, and ASHA compares trials epoch by epoch
        raise DeepLenseError(
            "train.max_minutes does not apply to a search; limit it with --time-budget"
        )
    space = check_space(space, base)
    for params in _corner_points(space):
        trial_config(base, params)  # a bad value fails here, not in every trial
    prepare_data(base)
    with ray_runtime(address, num_cpus=num_cpus):
        gpus = _check_resources(settings)
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
        _fit(tuner, on_event)
        return summarize(name)


def _corner_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    lows, highs = {}, {}
    for key, spec in space.items():
        if spec["type"] == "choice":
            lows[key], highs[key] = spec["values"][0], spec["values"][-1]
        elif spec["type"] == "randint":
            lows[key], highs[key] = spec["low"], spec["high"] - 1
        else:
            lows[key], highs[key] = spec["low"], spec["high"]
    return [lows, highs]


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
        _trainable(state, exp),
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
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=exp.name,
            storage_path=str(exp.parent),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_progress_callback()],
            verbose=0,
        ),
    )


def _fit(tuner: Any, on_event: Callable[[dict[str, Any]], None] | None) -> None:
    global _listener
    _listener = on_event
    try:
        tuner.fit()
    finally:
        _listener = None


def read_state(name: str) -> dict[str, Any]:
    import json

    exp = experiment_dir(name)
    path = exp / STATE_FILE
    if not path.is_file():
        root = exp.parent
        known = (
            sorted(p.name for p in root.iterdir() if (p / STATE_FILE).is_file())
            if root.is_dir()
            else []
        )
        raise DeepLenseError(
            f"no tune experiment {name!r} in {root}; "
            + (f"known: {', '.join(known)}" if known else "none has been run yet")
        )
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeepLenseError(f"cannot read {path}: {exc}") from None
    return state


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
        with _quiet_analysis():
            tuner = tune.Tuner.restore(
                str(exp),
                trainable=_trainable(state, exp),
                resume_unfinished=True,
                resume_errored=True,
            )
        _start_event(on_event, state, exp, resumed=True)
        _fit(tuner, on_event)
        return summarize(name)


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
            "mode": METRIC_MODES[settings["metric"]],
            "gpus_per_trial": state["gpus_per_trial"],
            "cpus_per_trial": settings["cpus_per_trial"],
        }
    )


# --------------------------------------------------------------------------- results


@contextlib.contextmanager
def _quiet_analysis() -> Iterator[None]:
    """Ray warns about trials without results (pending ones); deeplense reports them itself."""
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trial_statuses(exp: Path) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """Ray's view of each trial: status, error text, sampled config."""
    from ray.tune import ExperimentAnalysis

    out: dict[str, tuple[str, str | None, dict[str, Any]]] = {}
    try:
        with _quiet_analysis():
            analysis = ExperimentAnalysis(str(exp))
    except Exception:  # no experiment state yet: nothing ran
        return out
    for trial in analysis.trials:
        error = None
        if trial.status == "ERROR":
            error = _first_error_line(getattr(trial, "error_file", None) or "")
        out[str(trial.trial_id)] = (str(trial.status), error, dict(trial.config))
    return out


def _first_error_line(path: str) -> str | None:
    p = Path(path)
    if not path or not p.is_file():
        return None
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else None


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None or not isinstance(v, int | float) or math.isnan(float(v)):
        return None
    return float(v)


def summarize(name: str) -> TuneOutcome:
    """Summarise an experiment from Ray's trial states and the trials' run directories;
    write ``trials.json``, ``best_config.yaml`` and ``learning_curves.png``."""
    from deeplense_cli.runs.rundir import RunDir

    state = read_state(name)
    exp = experiment_dir(name)
    settings = TuneSettings(**state["settings"])
    metric, sign = settings.metric, (1.0 if settings.mode == "max" else -1.0)
    trials: list[TrialSummary] = []
    for trial_id, (status, error, params) in sorted(_trial_statuses(exp).items()):
        run = RunDir(exp / "runs" / trial_id)
        rows = run.read_metrics()
        curve = [_value(r, metric) for r in rows]
        scored = [(v, int(r["epoch"])) for v, r in zip(curve, rows, strict=True) if v is not None]
        best_value, best_epoch = None, None
        if scored:
            best_value, best_epoch = max(scored, key=lambda s: (sign * s[0], -s[1]))
        epochs = int(rows[-1]["epoch"]) if rows else 0
        if status == "TERMINATED":
            label = "completed" if epochs >= settings.max_epochs else "stopped"
        elif status == "ERROR":
            label = "error"
        elif status == "PENDING" and not rows:
            label = "pending"
        else:
            label = "interrupted"
        params = {k: params[k] for k in state["space"] if k in params}
        trials.append(
            TrialSummary(
                trial_id, params, label, epochs, best_value, best_epoch, str(run.path), error, curve
            )
        )
    trials.sort(key=lambda t: t.trial_id)
    best = _pick_best(trials, sign, run_loss=lambda t: _best_loss(t))
    best_config_path = plot_path = None
    if best is not None:
        best_config_path = exp / BEST_CONFIG
        write_best_config(state, best, metric, best_config_path)
    if any(t.curve for t in trials):
        plot_path = exp / PLOT_FILE
        plot_learning_curves(trials, metric, plot_path, best, title=f"{name}: {metric}")
    atomic.write_json(
        exp / TRIALS_FILE,
        [{k: v for k, v in asdict(t).items() if k != "curve"} for t in trials],
    )
    finished = bool(trials) and all(t.status not in ("pending", "interrupted") for t in trials)
    finished = finished and len(trials) >= settings.num_samples
    return TuneOutcome(
        name=name,
        path=exp,
        metric=metric,
        mode=settings.mode,
        max_epochs=settings.max_epochs,
        trials=trials,
        best=best,
        best_config_path=best_config_path,
        plot_path=plot_path,
        finished=finished,
    )


def _best_loss(trial: TrialSummary) -> float:
    from deeplense_cli.runs.rundir import RunDir

    for row in RunDir(trial.run_dir).read_metrics():
        if int(row.get("epoch", -1)) == trial.best_epoch:
            return float(row.get("val_loss", math.inf))
    return math.inf


def _pick_best(
    trials: list[TrialSummary], sign: float, run_loss: Callable[[TrialSummary], float]
) -> TrialSummary | None:
    """The winner of ASHA's highest rung: among the trials that trained the most epochs, the
    one with the best metric (at any of its epochs); ties go to the lower validation loss.

    A trial stopped early was behind its peers at a rung; its early, noisy peak does not
    outrank the trials that were promoted past it.
    """
    scored = [t for t in trials if t.best_value is not None and t.status != "error"]
    if not scored:
        return None
    return max(scored, key=lambda t: (t.epochs, sign * float(t.best_value or 0.0), -run_loss(t)))


def write_best_config(
    state: dict[str, Any], best: TrialSummary, metric: str, path: Path
) -> dict[str, Any]:
    """Write the best trial's full resolved config, ready for ``deeplense train --config``."""
    config = trial_config(state["config"], best.params)
    config["train"]["num_threads"] = state["config"]["train"].get("num_threads")
    value = "n/a" if best.best_value is None else f"{best.best_value:.6g}"
    header = (
        f"# Best configuration of tune experiment {state['name']!r}: trial {best.trial_id}, "
        f"{metric} {value} at epoch {best.best_epoch} of {best.epochs}.\n"
        f"# Train it with: deeplense train --config {path.name}\n"
    )
    atomic.write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return config


def plot_learning_curves(
    trials: list[TrialSummary],
    metric: str,
    path: Path,
    best: TrialSummary | None = None,
    title: str | None = None,
) -> None:
    """The metric against the epoch, one line per trial (the best one bold), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        xs = [i + 1 for i, v in enumerate(t.curve) if v is not None]
        ys = [v for v in t.curve if v is not None]
        if not xs:
            continue
        is_best = best is not None and t.trial_id == best.trial_id
        ax.plot(
            xs,
            ys,
            "o-" if is_best else ".-",
            lw=2.5 if is_best else 1.0,
            alpha=1.0 if is_best else 0.7,
            label=f"{t.trial_id} ({t.status}){' best' if is_best else ''}",
            zorder=3 if is_best else 2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    if len(trials) <= 20:
        ax.legend(fontsize=7, loc="best")
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- SLURM


def tune_job(request: dict[str, Any]) -> dict[str, Any]:
    """Run a search inside a SLURM allocation, with a Ray runtime on the job's CPUs/GPUs.

    ``request``: ``{"config", "space", "settings", "name"}`` for a new search or
    ``{"resume": NAME}``. Called again after a requeue (preemption), it resumes.
    """
    env = request.get("env") or {}
    os.environ.update(env)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or 1)
    gpus = len([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()])
    job = os.environ.get("SLURM_JOB_ID", "local")
    temp = f"{ray_temp_dir()}-{job}"
    name = str(request.get("resume") or request["name"])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        num_cpus=cpus, num_gpus=gpus, _temp_dir=temp, include_dashboard=False, log_to_driver=False
    )
    try:
        printer = _print_event
        if "resume" in request or (experiment_dir(name) / STATE_FILE).exists():
            outcome = resume_tune(name, on_event=printer)
        else:
            outcome = run_tune(
                request["config"],
                request["space"],
                TuneSettings(**request["settings"]),
                name=name,
                on_event=printer,
            )
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return {
        "name": outcome.name,
        "path": str(outcome.path),
        "finished": outcome.finished,
        "best": asdict(outcome.best) if outcome.best else None,
        "best_config": str(outcome.best_config_path) if outcome.best_config_path else None,
    }


def _print_event(event: dict[str, Any]) -> None:
    import json

    print(json.dumps(event, default=str), flush=True)


def submit_tune_job(request: dict[str, Any], options: Any) -> Any:
    """Submit :func:`tune_job` as one SLURM job (``options``: ``deeplense_cli.cluster.slurm.SlurmOptions``);
    its files (submitit's) go to ``tune/NAME/slurm/<job id>``."""
    from deeplense_cli.cluster import slurm

    name = str(request.get("resume") or request["name"])
    exp = experiment_dir(name)
    if "resume" in request:
        read_state(name)
    elif (exp / STATE_FILE).exists():
        raise DeepLenseError(
            f"tune experiment {name!r} already exists at {exp}; continue it with "
            f"`deeplense tune --resume {name}` or choose another --name"
        )
    request = {**request, "env": _env_for_trials()}
    return slurm.submit(
        slurm.Resumable(tune_job, request),
        options=options,
        folder=exp / "slurm" / "%j",
        name=f"tune-{name}",
        run_dir=exp,
        command=f"deeplense tune {'--resume ' + name if 'resume' in request else '--name ' + name}",
    )
