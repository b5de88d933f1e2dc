"""The SLURM flags shared by train, tune and benchmark (click only; no SLURM imports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from deeplense_cli.commands.options import option_group


def slurm_options(submit_help: str, wait_help: str) -> Callable[[Any], Any]:
    """``--slurm`` plus the resource flags; ``kw`` then holds them for :func:`slurm_flags`."""
    return option_group(
        click.option("--slurm", is_flag=True, help=submit_help),
        click.option("--partition", help="SLURM partition (see `sinfo`)."),
        click.option("--gpus", type=int, help="GPUs per node."),
        click.option("--cpus", type=int, help="CPUs per task."),
        click.option("--mem", help="Memory per node, e.g. 16G."),
        click.option("--time", "time_limit", help="Time limit: minutes or HH:MM:SS."),
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
