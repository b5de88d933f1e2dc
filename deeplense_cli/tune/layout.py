"""An experiment's folder, ``run_root()/tune/NAME``, and the state a search is resumed from::

tune.json            the settings, base config and space (used by --resume)
tuner.pkl, experiment_state-*.json, trial_<id>/   Ray Tune's own files and checkpoints
runs/<trial id>/     each trial's deeplense run directory (config, metrics, checkpoints)
trials.json          one summary row per trial
best_config.yaml     the best trial's full config: a valid ``deeplense train --config``
learning_curves.png  the metric against the epoch, one line per trial
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from deeplense_cli.core import paths
from deeplense_cli.core.errors import DeepLenseError

STATE_FILE = "tune.json"
BEST_CONFIG = "best_config.yaml"
PLOT_FILE = "learning_curves.png"
TRIALS_FILE = "trials.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def experiment_dir(name: str) -> Path:
    if not _NAME_RE.match(name):
        raise DeepLenseError(
            f"invalid experiment name {name!r}; use letters, digits, '.', '_' and '-'"
        )
    return paths.run_root() / "tune" / name


def new_experiment_dir(name: str) -> Path:
    """The folder of a new experiment ``name``; one that already ran is an error."""
    exp = experiment_dir(name)
    if (exp / STATE_FILE).exists():
        raise DeepLenseError(
            f"tune experiment {name!r} already exists at {exp}; continue it with "
            f"`deeplense tune --resume {name}` or choose another --name"
        )
    return exp


def default_name(config: dict[str, Any]) -> str:
    data = config["data"]
    dataset = data.get("dataset") or (Path(str(data.get("data") or "data")).name or "data")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", f"{config['model']['name'].lower()}-{dataset}-{stamp}")


def read_state(name: str) -> dict[str, Any]:
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
