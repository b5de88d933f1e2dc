"""Run configuration: built-in defaults < architecture defaults < --config FILE < flags.

A configuration is a plain mapping with five sections::

    model: {name: CCT, params: {...}}       # params override the architecture's defaults
    data:  {dataset: Model_III, data: null, ...}
    train: {epochs: 10, lr: 0.0005, ...}
    slurm: {partition: null, ...}           # used by --slurm
    tracking: {loggers: [], experiment: null}   # --log tensorboard,mlflow

The resolved configuration is saved as ``config.yaml`` in every run directory, and that file
is itself a valid ``--config``. Each setting's default, choices and meaning are in
:mod:`~deeplense_cli.training.defaults`.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from deeplense_cli.core import yamlio
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import (
    AXION_MASS,
    REGRESSION_LOSSES,
    TARGET_NAME,
    TARGET_SCALINGS,
    TASKS,
    task_of,
)
from deeplense_cli.tracking import check_loggers, logger_names
from deeplense_cli.training.defaults import (
    AMP_MODES,
    AUGMENT_GROUPS,
    DATA_DEFAULTS,
    FINETUNE_DEFAULTS,
    FREEZE,
    METRICS,
    RESUME_CHANGES,
    SECTIONS,
    SLURM_DEFAULTS,
    TASK_METRICS,
    TRACKING_DEFAULTS,
    TRAIN_DEFAULTS,
)
from deeplense_cli.training.init import InitSource, find_source


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    raw = yamlio.load_mapping(p, "config file", f"sections {', '.join(SECTIONS)}")
    _check_sections(raw, f"config file {p}")
    return raw


def config_from_mapping(raw: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A configuration given as a mapping (a parsed file, a run's ``config.yaml``), checked
    as a ``--config`` file is; a copy, so resolving it never changes ``raw``."""
    if not isinstance(raw, dict):
        raise DeepLenseError(f"{where} must be a mapping with sections {', '.join(SECTIONS)}")
    _check_sections(raw, where)
    return copy.deepcopy(raw)


def _check_sections(raw: dict[str, Any], where: str) -> None:
    # a run's config.yaml also records its version and its processes (distributed)
    unknown = set(raw) - set(SECTIONS) - {"deeplense_version", "classes", "distributed"}
    if unknown:
        raise DeepLenseError(
            f"{where}: unknown section(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(SECTIONS)}"
        )
    for section in SECTIONS:
        if section in raw and raw[section] is not None and not isinstance(raw[section], dict):
            raise DeepLenseError(f"{where}: section {section!r} must be a mapping")


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML (``4`` -> 4, ``5e-4`` -> 0.0005, ``[1, 2]`` -> list,
    ``x`` -> 'x')."""
    try:
        return yamlio.load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` pairs from ``--set``; keys may be dotted (``train.lr``, ``model.depth``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DeepLenseError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _check_keys(section: str, values: dict[str, Any], known: dict[str, Any]) -> None:
    unknown = set(values) - set(known)
    if unknown:
        raise DeepLenseError(
            f"unknown {section} setting(s): {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def resolve(
    file_config: dict[str, Any] | None = None,
    flags: dict[str, dict[str, Any]] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve the full configuration.

    :param file_config: the parsed ``--config`` file (may be empty).
    :param flags: per-section values given as command-line flags (``None`` values ignored).
    :param overrides: dotted ``--set`` values: ``train.lr``, ``data.val_fraction``,
        ``model.depth`` (a bare key is looked up in train, then data, then model params).
    """
    file_config = copy.deepcopy(file_config or {})
    flags = {
        k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in (flags or {}).items()
    }

    model_file = file_config.get("model") or {}
    init = _init_source(file_config, flags, overrides or {})
    name = flags.get("model", {}).get("name") or model_file.get("name")
    if init is not None and name and get_architecture(str(name)).name != init.architecture:
        raise DeepLenseError(
            f"--model {name} does not match --init {init.spec}, a {init.architecture}; "
            "leave out --model (the architecture comes with the weights)"
        )
    name = name or (init.architecture if init is not None else None)
    if not name:
        raise DeepLenseError("no model given; pass --model NAME (see `deeplense models`)")
    arch = get_architecture(str(name))

    params = dict(arch.defaults)
    if init is not None:  # the source's hyper-parameters: its weights fit no others
        params.update(arch.canonical_params(init.params))
    file_params = arch.canonical_params(model_file.get("params") or {})
    _check_keys(f"{arch.name} model", file_params, params)
    params.update(file_params)
    params.update(arch.canonical_params(flags.get("model", {}).get("params", {}) or {}))

    train = {**TRAIN_DEFAULTS, **dict(arch.train_defaults)}
    if init is not None:
        train.update(FINETUNE_DEFAULTS)
        if init.classes == [TARGET_NAME]:  # a regressor's weights: its task unless given
            train["task"] = AXION_MASS
    data = dict(DATA_DEFAULTS)
    if init is not None:  # the source's crop, unless one is given below
        data["crop"] = init.transform.get("crop")
    slurm = dict(SLURM_DEFAULTS)
    tracking = copy.deepcopy(TRACKING_DEFAULTS)
    sections = {"train": train, "data": data, "slurm": slurm, "tracking": tracking}
    for section, target in sections.items():
        values = dict(file_config.get(section) or {})
        _check_keys(section, values, target)
        target.update(values)
        flag_values = flags.get(section, {})
        _check_keys(section, flag_values, target)
        target.update(flag_values)

    set_params: dict[str, Any] = {}  # model hyper-parameters given with --set, by their own key
    for key, value in (overrides or {}).items():
        section, _, sub = key.partition(".")
        if sub and section == "model":
            set_params[sub] = value
            sub = arch.param_name(sub)
            _check_keys(f"{arch.name} model", {sub: value}, params)
            params[sub] = value
        elif sub and section in sections:
            target = sections[section]
            _check_keys(section, {sub: value}, target)
            target[sub] = value
        elif not sub and key in train:
            train[key] = value
        elif not sub and key in data:
            data[key] = value
        elif not sub and (param := arch.param_name(key)) in params:
            set_params[key] = value
            params[param] = value
        else:
            raise DeepLenseError(
                f"unknown setting {key!r}; use model.<param>, train.<key>, data.<key>, "
                "tracking.<key> (see `deeplense train --print-config`)"
            )
    arch.canonical_params(set_params)  # an old and a new name set to different values

    if train["augment"] == "auto":
        train["augment"] = "rot180" if data.get("dataset") else "dihedral"
    stop_on = train["early_stopping_metric"]
    if stop_on == TRAIN_DEFAULTS["early_stopping_metric"] and stop_on not in TASK_METRICS.get(
        train["task"], (stop_on,)
    ):
        # the classifier's default means nothing to a regressor: its task's own default
        train["early_stopping_metric"] = TASK_METRICS[train["task"]][0]
    if train["amp"] is False:  # YAML 1.1 reads a bare `off` (--set train.amp=off) as false
        train["amp"] = "off"
    if init is not None:
        train["init"] = init.spec
    _validate_train(train)
    _validate_data(data)
    if train["patience"] and data["val_fraction"] == 0:
        raise DeepLenseError(
            "train.patience needs a validation split to stop on, and data.val_fraction is 0; "
            "set --val-fraction above 0, or --patience 0"
        )
    _validate_tracking(tracking)
    return {
        "model": {"name": arch.name, "params": params},
        "data": data,
        "train": train,
        "slurm": slurm,
        "tracking": tracking,
    }


def _init_source(
    file_config: dict[str, Any], flags: dict[str, dict[str, Any]], overrides: dict[str, Any]
) -> InitSource | None:
    """The ``train.init`` source, whichever layer gives it (flags over --set over the file)."""
    spec = (file_config.get("train") or {}).get("init")
    for key in ("init", "train.init"):
        spec = overrides.get(key, spec)
    spec = flags.get("train", {}).get("init", spec)
    if spec is None:
        return None
    if not isinstance(spec, str | os.PathLike):
        raise DeepLenseError(f"train.init must be a name or a path, got {spec!r}")
    return find_source(spec)


def _boolean(key: str, value: Any) -> None:
    # a quoted "no" or "false" is a non-empty string, which Python would take as true
    if not isinstance(value, bool):
        raise DeepLenseError(f"{key} must be true or false, got {value!r}")


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _validate_train(train: dict[str, Any]) -> None:
    """Every training setting has the right type and a sensible range, so a bad value is
    refused before anything is written (a NaN learning rate used to fail inside torch)."""
    check_number("train.epochs", train["epochs"], 1, integer=True)
    check_number("train.max_minutes", train["max_minutes"], 0, optional=True, hint=" (0: no limit)")
    check_number("train.batch_size", train["batch_size"], 1, integer=True)
    check_number("train.eval_batch_size", train["eval_batch_size"], 1, integer=True)
    check_number("train.lr", train["lr"], 0, 1, low_open=True)
    check_number("train.min_lr_ratio", train["min_lr_ratio"], 0, 1)
    check_number("train.weight_decay", train["weight_decay"], 0)
    check_number("train.warmup_epochs", train["warmup_epochs"], 0)
    check_number("train.grad_clip", train["grad_clip"], 0, hint=" (0 disables)")
    check_number("train.label_smoothing", train["label_smoothing"], 0, 1, high_open=True)
    check_number("train.ema_decay", train["ema_decay"], 0, 1, high_open=True, hint=" (0 disables)")
    check_number(
        "train.patience", train["patience"], 0, integer=True, optional=True, hint=" (0 disables)"
    )
    check_number("train.min_delta", train["min_delta"], 0)
    check_number("train.degrade", train["degrade"], 0, 1, hint=" (0 disables)")
    check_number("train.seed", train["seed"], 0, integer=True)
    check_number(
        "train.num_threads",
        train["num_threads"],
        0,
        integer=True,
        optional=True,
        hint=" (0: the available cores)",
    )
    check_number(
        "train.precise_bn_images", train["precise_bn_images"], 0, integer=True, hint=" (0 disables)"
    )
    _boolean("train.test_curve", train["test_curve"])
    _boolean("train.sync_bn", train["sync_bn"])
    if train["freeze"] not in FREEZE:
        raise DeepLenseError(
            f"train.freeze must be one of {', '.join(FREEZE)}, got {train['freeze']!r}"
        )
    if train["freeze"] != "none" and not train["init"]:
        raise DeepLenseError(
            f"train.freeze={train['freeze']} needs --init (trained weights to freeze)"
        )
    if train["early_stopping_metric"] not in METRICS:
        raise DeepLenseError(
            f"train.early_stopping_metric must be one of {', '.join(METRICS)}, "
            f"got {train['early_stopping_metric']!r}"
        )
    validate_task(train)
    if train["augment"] not in (True, False, *AUGMENT_GROUPS):
        raise DeepLenseError(
            f"train.augment must be auto, {', '.join(AUGMENT_GROUPS)}, true (dihedral) or "
            f"false (none), got {train['augment']!r}"
        )
    if train["amp"] not in AMP_MODES:
        raise DeepLenseError(
            f"train.amp must be one of {', '.join(AMP_MODES)}, got {train['amp']!r}"
        )
    if train["channels_last"] not in ("auto", True, False):
        raise DeepLenseError(
            f"train.channels_last must be auto, true or false, got {train['channels_last']!r}"
        )
    device = train["device"]
    if not isinstance(device, str) or not _DEVICE.match(device.lower()):
        raise DeepLenseError(f"train.device must be auto, cpu, cuda or cuda:N, got {device!r}")


def validate_task(train: dict[str, Any]) -> None:
    """``train.task`` and the regression settings; a metric the task does not record."""
    if train["task"] not in TASKS:
        raise DeepLenseError(f"train.task must be one of {', '.join(TASKS)}, got {train['task']!r}")
    if train["regression_loss"] not in REGRESSION_LOSSES:
        raise DeepLenseError(
            f"train.regression_loss must be one of {', '.join(REGRESSION_LOSSES)}, "
            f"got {train['regression_loss']!r}"
        )
    if train["target_scaling"] not in TARGET_SCALINGS:
        raise DeepLenseError(
            f"train.target_scaling must be one of {', '.join(TARGET_SCALINGS)}, "
            f"got {train['target_scaling']!r}"
        )
    metric = train["early_stopping_metric"]
    if metric not in TASK_METRICS[train["task"]]:
        raise DeepLenseError(
            f"train.early_stopping_metric {metric} is not recorded by --task {train['task']}; "
            f"use one of {', '.join(TASK_METRICS[train['task']])}"
        )


def default_metric(config: dict[str, Any]) -> str:
    """The validation metric a search compares by default: the first its task records (the
    macro AUC, or a regressor's MAE)."""
    return TASK_METRICS[task_of(config)][0]


def check_metric(config: dict[str, Any], metric: str) -> None:
    """A metric that the config's task records (a regressor has no AUC)."""
    task = config["train"].get("task", "classify")
    if metric not in TASK_METRICS[task]:
        raise DeepLenseError(
            f"--metric {metric} is not recorded by --task {task}; "
            f"use one of {', '.join(TASK_METRICS[task])}"
        )


def _validate_data(data: dict[str, Any]) -> None:
    """The data settings' types and ranges (the same rules as data.splits, checked before a
    run folder exists)."""
    for key in ("dataset", "data", "data_root"):
        if data[key] is not None and not isinstance(data[key], str):
            raise DeepLenseError(f"data.{key} must be a name or a path, got {data[key]!r}")
    check_number("data.val_fraction", data["val_fraction"], 0, 1, high_open=True)
    check_number("data.test_fraction", data["test_fraction"], 0, 1, high_open=True)
    check_number("data.split_seed", data["split_seed"], 0, integer=True)
    for key in ("max_train_per_class", "max_test_per_class"):
        check_number(f"data.{key}", data[key], 1, integer=True, optional=True)
    for key in ("skip_bad", "standardize"):
        _boolean(f"data.{key}", data[key])
    crop = data["crop"]
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        # the same rule as data.transforms.check_crop, which also knows the images' size
        raise DeepLenseError(f"data.crop must be a whole number of pixels (or null), got {crop!r}")


def _validate_tracking(tracking: dict[str, Any]) -> None:
    """Known loggers whose libraries are installed (a missing one names its extra), and an
    experiment name; normalises ``loggers`` to a list of lower-case names."""
    tracking["loggers"] = logger_names(tracking["loggers"])
    experiment = tracking["experiment"]
    if experiment is not None and (not isinstance(experiment, str) or not experiment.strip()):
        raise DeepLenseError(
            f"tracking.experiment must be a name (or null for 'deeplense'), got {experiment!r}"
        )
    check_loggers(tracking["loggers"])


def resume_config(
    run_path: str | Path, epochs: int | None = None, **changes: Any
) -> tuple[dict[str, Any], RunDir]:
    """The configuration a run continues with: its ``config.yaml``, checked as a config file
    is, with the ``train`` settings of :data:`RESUME_CHANGES` given here applied (None: keep).

    Nothing is written; the caller saves the changed config once it has been checked.
    """
    run = RunDir.open(run_path)
    raw = run.read_config()
    raw.pop("deeplense_version", None)
    raw.pop("distributed", None)  # the layout it trained with; written again when it goes on
    missing = [s for s in ("model", "data", "train") if not isinstance(raw.get(s), dict)]
    if missing:
        raise DeepLenseError(
            f"cannot resume {run.path}: its config.yaml has no {', '.join(missing)} section(s), "
            "so it is not a deeplense run; pass the directory that `deeplense train` printed"
        )
    _check_sections(raw, f"cannot resume {run.path}: {run.config_path.name}")
    unknown = set(changes) - set(RESUME_CHANGES)
    if unknown:
        raise ValueError(f"resume_config cannot change {', '.join(sorted(unknown))}")
    train = dict(raw["train"])
    train.update({k: v for k, v in {"epochs": epochs, **changes}.items() if v is not None})
    # The init source gave the first weights only: resuming needs it no more (it may be gone).
    started_from = {k: train.pop(k) for k in ("init", "freeze") if k in train}
    try:
        config = resolve({**raw, "train": train})
    except DeepLenseError as exc:
        raise DeepLenseError(f"cannot resume {run.path}: {run.config_path.name}: {exc}") from None
    config["train"].update(started_from)
    return config, run
