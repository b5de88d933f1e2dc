"""What a job asks SLURM for, and how a config's ``slurm`` section becomes that request."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from deeplense_cli.core.durations import parse_duration
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.training.defaults import SLURM_DEFAULTS

_MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class SlurmOptions:
    """What a job asks SLURM for.

    ``mem`` is per node in sbatch's syntax (``"4G"``, ``"500M"``); ``None`` uses the cluster's
    default (``DefMemPerCPU``). ``time`` is the wall-clock limit in minutes. ``extra`` holds
    further sbatch options by long name without dashes, e.g. ``{"constraint": "a100",
    "exclude": "node7"}``; ``True`` gives a bare flag. ``nodes`` x ``tasks_per_node`` tasks
    run the callable together (a training job: one DDP rank each; ``None``: one task);
    ``cpus`` is per task.
    """

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    time: int = 60
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    tasks_per_node: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.gpus < 0:
            raise DeepLenseError(f"gpus must be 0 or more, got {self.gpus}")
        if self.cpus < 1:
            raise DeepLenseError(f"cpus must be 1 or more, got {self.cpus}")
        if self.nodes < 1:
            raise DeepLenseError(f"nodes must be 1 or more, got {self.nodes}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise DeepLenseError(f"tasks per node must be 1 or more, got {self.tasks_per_node}")
        if self.time < 1:
            raise DeepLenseError(f"time is in minutes and must be 1 or more, got {self.time}")
        if self.mem is not None and not _MEM_RE.match(str(self.mem)):
            raise DeepLenseError(
                f"mem {self.mem!r} is not in sbatch's syntax; use e.g. '4G' or '500M'"
            )

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {"timeout_min": int(self.time), "cpus_per_task": int(self.cpus)}
        tasks = int(self.tasks_per_node or 1)
        if self.nodes > 1 or tasks > 1:
            params["nodes"] = int(self.nodes)
            params["tasks_per_node"] = tasks
            # one task that dies ends the others at once (they would wait in a collective)
            params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        if self.gpus:
            params["gpus_per_node"] = int(self.gpus)
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.mem:
            params["slurm_mem"] = str(self.mem).upper()
        if self.account:
            params["slurm_account"] = self.account
        if self.qos:
            params["slurm_qos"] = self.qos
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        return params


def time_limit_minutes(value: Any) -> int:
    """A SLURM time limit in whole minutes: a number is minutes (as in a YAML config); text is
    read as sbatch reads ``--time`` (a bare number is minutes) or with units (``2h``), rounded up.
    """
    if value is None:
        value = SLURM_DEFAULTS["time"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(1, int(value))
    seconds = parse_duration(
        value, bare_unit=60, what="time limit", examples="90, 04:00:00, 1-12:00 or 2h"
    )
    return max(1, math.ceil(round(seconds, 6) / 60))


def options_from_config(section: dict[str, Any]) -> SlurmOptions:
    """A config's ``slurm`` section as checked :class:`SlurmOptions`."""
    opts = SlurmOptions(
        partition=section.get("partition"),
        gpus=int(section.get("gpus") or 0),
        cpus=int(section.get("cpus") or 1),
        mem=section.get("mem"),
        time=time_limit_minutes(section.get("time")),
        account=section.get("account"),
        qos=section.get("qos"),
        nodes=int(section.get("nodes") or 1),
        tasks_per_node=int(section["tasks_per_node"]) if section.get("tasks_per_node") else None,
    )
    opts.validate()
    return opts
