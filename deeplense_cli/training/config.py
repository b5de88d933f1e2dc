"""Run configuration: built-in defaults < architecture defaults < --config FILE < flags.

A configuration is a plain mapping with four sections::

    model: {name: CCT, params: {...}}       # params override the architecture's defaults
    data:  {dataset: Model_III, data: null, ...}
    train: {epochs: 10, lr: 0.0005, ...}
    slurm: {partition: null, ...}           # used by --slurm

The resolved configuration is saved as ``config.yaml`` in every run directory, and that file
is itself a valid ``--config``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from deeplense_cli.core import yamlio
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.version import __version__
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.runs.rundir import RunDir

DATA_DEFAULTS: dict[str, Any] = {
    "dataset": None,  # Model_I / Model_II / Model_III under the data root
    "data": None,  # any class-per-folder tree
    "data_root": None,
    "val_fraction": 0.1,
    "test_fraction": 0.1,  # held-out share when there is no test folder
    "split_seed": 0,
    "max_train_per_class": None,
    "max_test_per_class": None,
    "skip_bad": False,
    # standardise inputs with the training pixels' mean and std (after min-max per image)
    "standardize": True,
    # centre crop in pixels before everything else (None: the whole image); the lens sits at
    # the centre and the outer pixels are mostly sky
    "crop": None,
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "max_minutes": None,  # time budget: plan at most as many epochs as fit (measured on epoch 1)
    "batch_size": 64,
    "lr": 5e-4,
    "min_lr_ratio": 0.01,  # cosine decays to lr * min_lr_ratio
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "grad_clip": 1.0,  # max gradient norm; 0 disables
    "label_smoothing": 0.0,
    "ema_decay": 0.0,  # 0 disables the weight EMA; e.g. 0.999
    # auto: rot180 on the DeepLense datasets (--dataset; their simulation fixes the main lens's
    # orientation, so only the half turn maps the data onto itself), dihedral (all flips and
    # 90-degree rotations) on other data; or dihedral, flips, rot180, none (true = dihedral)
    "augment": "auto",
    "early_stopping_metric": "val_macro_auc",  # or val_loss, val_accuracy
    "patience": 0,  # epochs without improvement before stopping; 0 disables
    # early stopping counts an epoch as progress only when it beats the best by more than this
    # (a frozen model's validation loss still moves by ~1e-7 with floating-point noise)
    "min_delta": 1e-4,
    "seed": 0,
    "device": "auto",  # auto, cpu, cuda, cuda:N
    "amp": "auto",  # auto (bf16/fp16 on CUDA, bf16 on CPUs with bf16 instructions), bf16, fp16, off
    "channels_last": "auto",
    "num_threads": None,  # CPU threads; default: the cores this process may use
    "eval_batch_size": 256,
    # BatchNorm models: recompute the running statistics from this many training images
    # before each validation ("precise BN"); 0 keeps the momentum averages
    "precise_bn_images": 1024,
}

SLURM_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "gpus": 0,
    "cpus": 2,
    "mem": None,
    "time": "04:00:00",
    "account": None,
    "qos": None,
}

SECTIONS = ("model", "data", "train", "slurm")

# The validation metrics a run can select its best epoch by, and which way is better.
METRICS: dict[str, str] = {"val_macro_auc": "max", "val_loss": "min", "val_accuracy": "max"}

# Augmentation groups (train.augment): transform t rotates by 90 x (t % 4) degrees, after a
# left-right flip when t >= 4. "dihedral" is all 8 symmetries of the square; "flips" the
# identity, both flips and the half turn; "rot180" the identity and the half turn.
AUGMENT_GROUPS: dict[str, tuple[int, ...]] = {
    "dihedral": tuple(range(8)),
    "flips": (0, 2, 4, 6),
    "rot180": (0, 2),
    "none": (0,),
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    raw = yamlio.load_mapping(p, "config file", f"sections {', '.join(SECTIONS)}")
    unknown = set(raw) - set(SECTIONS) - {"deeplense_version", "classes"}
    if unknown:
        raise DeepLenseError(
            f"config file {p}: unknown section(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(SECTIONS)}"
        )
    for section in SECTIONS:
        if section in raw and raw[section] is not None and not isinstance(raw[section], dict):
            raise DeepLenseError(f"config file {p}: section {section!r} must be a mapping")
    return raw


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
    name = flags.get("model", {}).get("name") or model_file.get("name")
    if not name:
        raise DeepLenseError("no model given; pass --model NAME (see `deeplense models`)")
    arch = get_architecture(str(name))

    params = dict(arch.defaults)
    file_params = arch.canonical_params(model_file.get("params") or {})
    _check_keys(f"{arch.name} model", file_params, params)
    params.update(file_params)
    params.update(arch.canonical_params(flags.get("model", {}).get("params", {}) or {}))

    train = {**TRAIN_DEFAULTS, **dict(arch.train_defaults)}
    data = dict(DATA_DEFAULTS)
    slurm = dict(SLURM_DEFAULTS)
    for section, target in (("train", train), ("data", data), ("slurm", slurm)):
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
        elif sub and section in ("train", "data", "slurm"):
            target = {"train": train, "data": data, "slurm": slurm}[section]
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
                f"unknown setting {key!r}; use model.<param>, train.<key>, data.<key> "
                f"(see `deeplense train --print-config`)"
            )
    arch.canonical_params(set_params)  # an old and a new name set to different values

    if train["augment"] == "auto":
        train["augment"] = "rot180" if data.get("dataset") else "dihedral"
    _validate_train(train)
    crop = data.get("crop")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        # the same rule as data.transforms.check_crop, which also knows the images' size
        raise DeepLenseError(f"data.crop must be a whole number of pixels (or null), got {crop!r}")
    return {
        "model": {"name": arch.name, "params": params},
        "data": data,
        "train": train,
        "slurm": slurm,
    }


def _validate_train(train: dict[str, Any]) -> None:
    def positive(key: str, kind: type = float) -> None:
        value = train[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise DeepLenseError(f"train.{key} must be a positive number, got {value!r}")
        if kind is int and int(value) != value:
            raise DeepLenseError(f"train.{key} must be an integer, got {value!r}")

    positive("epochs", int)
    positive("batch_size", int)
    positive("lr")
    if train["early_stopping_metric"] not in METRICS:
        raise DeepLenseError(
            f"train.early_stopping_metric must be one of {', '.join(METRICS)}, "
            f"got {train['early_stopping_metric']!r}"
        )
    if train["augment"] not in (True, False, *AUGMENT_GROUPS):
        raise DeepLenseError(
            f"train.augment must be auto, {', '.join(AUGMENT_GROUPS)}, true (dihedral) or "
            f"false (none), got {train['augment']!r}"
        )
    delta = train["min_delta"]
    if not isinstance(delta, int | float) or isinstance(delta, bool) or not delta >= 0:
        raise DeepLenseError(f"train.min_delta must be a number >= 0, got {delta!r}")
    bn = train["precise_bn_images"]
    if not isinstance(bn, int) or isinstance(bn, bool) or bn < 0:
        raise DeepLenseError(
            f"train.precise_bn_images must be a whole number >= 0 (0 disables), got {bn!r}"
        )
    if not 0 <= float(train["ema_decay"]) < 1:
        raise DeepLenseError("train.ema_decay must be in [0, 1)")
    if str(train["amp"]) not in ("auto", "bf16", "fp16", "off"):
        raise DeepLenseError("train.amp must be auto, bf16, fp16 or off")


def resume_config(run_path: str | Path, epochs: int | None = None) -> tuple[dict[str, Any], RunDir]:
    run = RunDir.open(run_path)
    config = run.read_config()
    config.pop("deeplense_version", None)
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
        run.write_config({**config, "deeplense_version": __version__})
    return config, run
