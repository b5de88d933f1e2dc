"""The click options that several commands share, and the help of the settings flags: each
option is written once here, its choices, defaults and meaning taken from the engine
(:mod:`deeplense_cli.training.defaults`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from deeplense_cli.evaluation.tta import TTA
from deeplense_cli.runs import CHECKPOINTS
from deeplense_cli.training.defaults import (
    DATA_DEFAULTS,
    DATA_HELP,
    SLURM_DEFAULTS,
    TRAIN_DEFAULTS,
    TRAIN_HELP,
)


def option_group(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying ``options`` in the order given (as if stacked in that order
    above the command), so a group shows up in ``--help`` as written."""

    def decorate(fn: Any) -> Any:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_help(key: str, section: str = "train", default: bool = True) -> str:
    """The help of the flag for the ``section.key`` setting: what it means, and its built-in
    default (``default=False`` where an architecture or the data decides it)."""
    text = (TRAIN_HELP if section == "train" else DATA_HELP)[key]
    value = (TRAIN_DEFAULTS if section == "train" else DATA_DEFAULTS)[key]
    if not default or value is None:
        return text
    return f"{text} [default: {_shown(value)}]"


def checkpoint_option(help_text: str | None = None) -> Callable[[Any], Any]:
    """``--checkpoint best|last``: which of a run's checkpoints a command reads."""
    return click.option(
        "--checkpoint",
        type=click.Choice(CHECKPOINTS),
        default=CHECKPOINTS[0],
        show_default=True,
        help=help_text,
    )


# evaluate and predict: the test-time augmentation to score with (export records one instead).
tta_option = click.option(
    "--tta",
    type=click.Choice(TTA),
    help="Test-time augmentation: rot180 averages the logits of each image and its half turn "
    "(the simulations' symmetry; about +0.2 points on Model_I/II for half the images/s). "
    "[default: the model file's own, else none]",
)

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    help="Folder holding the datasets [default: $DEEPLENSE_DATA_ROOT, else "
    "$DEEPLENSE_HOME/data, else ~/.deeplense/data].",
)

# Where the data is and how it is split (train, tune): the flags that :func:`data_flags` reads.
data_options = option_group(
    click.option("--dataset", help=setting_help("dataset", "data")),
    click.option("--data", "data_path", type=click.Path(), help=setting_help("data", "data")),
    data_root_option,
    click.option("--split-seed", type=int, help=setting_help("split_seed", "data")),
    click.option("--val-fraction", type=float, help=setting_help("val_fraction", "data")),
    click.option(
        "--max-train-per-class", type=int, help=setting_help("max_train_per_class", "data")
    ),
    click.option("--max-test-per-class", type=int, help=setting_help("max_test_per_class", "data")),
    click.option(
        "--skip-bad", is_flag=True, default=None, help=setting_help("skip_bad", "data", False)
    ),
)


def data_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """The data settings given as flags, as a config ``data`` section."""
    return {
        "dataset": kw["dataset"],
        "data": kw["data_path"],
        "data_root": kw["data_root"],
        "split_seed": kw["split_seed"],
        "val_fraction": kw["val_fraction"],
        "max_train_per_class": kw["max_train_per_class"],
        "max_test_per_class": kw["max_test_per_class"],
        "skip_bad": kw["skip_bad"],
    }


log_option = click.option(
    "--log",
    "loggers",
    metavar="NAMES",
    help="Record the run in experiment trackers, comma-separated: tensorboard, mlflow, "
    "or a plugin's; none for off [default: tracking.loggers of --config, else off].",
)

output_option = click.option(
    "--output",
    type=click.Choice(["rich", "jsonl", "quiet"]),
    default="rich",
    show_default=True,
    help="Progress display: rich bars, JSON lines on stdout (an 'interrupted' event on "
    "Ctrl+C or SIGTERM), or quiet (only the run directory).",
)


def _slurm(text: str, key: str) -> str:
    return f"{text} [default: slurm.{key} of --config, else {SLURM_DEFAULTS[key]}]"


def slurm_options(submit_help: str, wait_help: str) -> Callable[[Any], Any]:
    """``--slurm`` plus the resource flags; ``kw`` then holds them for :func:`slurm_flags`."""
    return option_group(
        click.option("--slurm", is_flag=True, help=submit_help),
        click.option("--partition", help="SLURM partition (see `sinfo`)."),
        click.option(
            "--gpus", "--gpus-per-node", "gpus", type=int, help=_slurm("GPUs per node.", "gpus")
        ),
        click.option("--cpus", type=int, help=_slurm("CPUs per task.", "cpus")),
        click.option("--mem", help="Memory per node, e.g. 16G."),
        click.option(
            "--time",
            "time_limit",
            help=_slurm("Time limit: minutes, HH:MM:SS, D-HH:MM or e.g. 2h.", "time"),
        ),
        click.option("--account"),
        click.option("--qos"),
        click.option("--wait", is_flag=True, help=wait_help),
    )


def slurm_flags(kw: dict[str, Any]) -> dict[str, Any]:
    """The resource flags given on the command line, as a config ``slurm`` section."""
    return {
        "partition": kw["partition"],
        "gpus": kw["gpus"],
        "cpus": kw["cpus"],
        "mem": kw["mem"],
        "time": kw["time_limit"],
        "account": kw["account"],
        "qos": kw["qos"],
    }
