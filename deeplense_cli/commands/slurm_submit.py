"""``--slurm`` for train and benchmark: turn a resolved config into a submitted job."""

from __future__ import annotations

import json
import re
from typing import Any

from deeplense_cli.core.console import err_console
from deeplense_cli.core.errors import DeepLenseError


def minutes(value: Any) -> int:
    """A SLURM time limit in whole minutes (rounded up), read as sbatch reads ``--time``:
    ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    if value is None:
        return 240
    if isinstance(value, int | float) and not isinstance(value, bool):
        return max(1, int(value))
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise DeepLenseError(f"cannot read time limit {value!r}; use e.g. 90, 04:00:00 or 1-12:00")
    days, b, c = (int(g) if g is not None else None for g in m.group(1, 3, 4))
    a = int(m.group(2))
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + (b or 0) * 60 + c
    else:  # MM[:SS]
        seconds = a * 60 + (b or 0)
    return max(1, -(-seconds // 60))


def options_from_config(section: dict[str, Any]) -> Any:
    from deeplense_cli.cluster.slurm import SlurmOptions

    opts = SlurmOptions(
        partition=section.get("partition"),
        gpus=int(section.get("gpus") or 0),
        cpus=int(section.get("cpus") or 1),
        mem=section.get("mem"),
        time=minutes(section.get("time")),
        account=section.get("account"),
        qos=section.get("qos"),
    )
    opts.validate()
    return opts


def follow(job: Any) -> Any:
    """Stream a job's progress (its JSON-lines output) until it ends."""
    from deeplense_cli.cluster.slurm import wait

    console = err_console()

    def on_update(state: str, lines: list[str]) -> None:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                if line.strip():
                    console.print(line, markup=False, highlight=False)
                continue
            if event.get("event") == "epoch":
                console.print(
                    f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, "
                    f"val acc {event.get('val_accuracy') or 0:.4f}, "
                    f"val macro AUC {event.get('val_macro_auc') or 0:.4f}"
                )
            elif event.get("event") in ("start", "end"):
                console.print(f"{event['event']}: run {event.get('run_dir')}")
        if not lines:
            console.print(f"job {job.job_id}: {state}")

    return wait(job, poll=2.0, on_update=on_update)


def submit_training(
    config: dict[str, Any], run: Any, resume: bool, wait: bool, output: str
) -> None:
    from deeplense_cli.cluster.slurm import Resumable, check_partition, require_slurm, submit
    from deeplense_cli.training.loop import train_job

    require_slurm()
    options = options_from_config(config.get("slurm") or {})
    check_partition(options.partition)
    name = f"train-{config['model']['name'].lower()}"
    job = submit(
        Resumable(train_job, config, str(run.path)),
        options=options,
        folder=run.path / "slurm" / "%j",
        name=name,
        run_dir=run.path,
        command=f"deeplense train {'--resume ' if resume else ''}{config['model']['name']} -> {run.path}",
    )
    err_console().print(
        f"Submitted SLURM job {job.job_id} ({name}); run directory {run.path}; "
        f"follow with `deeplense jobs logs {job.job_id}`"
    )
    print(job.job_id)
    if wait:
        summary = follow(job)
        test = (summary or {}).get("test") or {}
        if test.get("accuracy") is not None:
            from deeplense_cli.training.reporters import fmt_value

            err_console().print(
                f"Finished: test accuracy {fmt_value(test['accuracy'])}, "
                f"macro AUC {fmt_value(test.get('macro_auc'))}"
            )
