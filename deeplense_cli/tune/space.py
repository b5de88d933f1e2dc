"""Search spaces: plain data registered by each architecture plugin as ``tune_space``::

    {"lr": {"type": "loguniform", "low": 1e-5, "high": 2e-3},
     "batch_size": {"type": "choice", "values": [32, 64, 128]},
     "model.depth": {"type": "choice", "values": [2, 3, 5]}}

``model.<name>`` keys are model hyper-parameters, other keys (or ``train.<name>``) training
settings; types are ``loguniform``, ``uniform`` (``low``/``high``), ``randint`` (``low``
inclusive, ``high`` exclusive) and ``choice`` (``values``). A YAML file in the same format
(``--space``) overrides or extends it; a key set to ``null`` removes that dimension.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from deeplense_cli.core import yamlio
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.training.config import resolve

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


def load_space_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``--space`` YAML file (the plain-data format described in this module)."""
    return yamlio.load_mapping(
        path,
        "space file",
        "setting names to dimensions, e.g. 'lr: {type: loguniform, low: 1e-5, high: 1e-3}'",
    )


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
    arch = get_architecture(config["model"]["name"])
    space = check_space(
        dict(arch.tune_space), config, f"{arch.name} tune_space (plugin {arch.plugin or '?'})"
    )
    if config["train"].get("init"):
        # fine-tuning: the weights fix the model's shape, so only training settings are searched
        space = {k: v for k, v in space.items() if not k.startswith("model.")}
    for key, spec in (override or {}).items():
        canon = _canonical_key(str(key), config, "--space")
        if config["train"].get("init") and canon.startswith("model.") and spec is not None:
            raise DeepLenseError(
                f"--space {key}: with --init the model's hyper-parameters come with its "
                "weights; search training settings only"
            )
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
    overrides = {(k if k.startswith("model.") else f"train.{k}"): v for k, v in params.items()}
    return resolve(copy.deepcopy(base), {}, overrides)


def corner_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Two points: every dimension at its lowest, then at its highest value (checking both
    catches a bad value before any trial runs)."""
    lows, highs = {}, {}
    for key, spec in space.items():
        if spec["type"] == "choice":
            lows[key], highs[key] = spec["values"][0], spec["values"][-1]
        elif spec["type"] == "randint":
            lows[key], highs[key] = spec["low"], spec["high"] - 1
        else:
            lows[key], highs[key] = spec["low"], spec["high"]
    return [lows, highs]
