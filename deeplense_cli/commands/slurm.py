"""``--slurm`` on train, tune and benchmark: the printing of submitted and followed jobs (the
flags: ``commands.options``; the jobs themselves: ``deeplense_cli.cluster.jobs``)."""

from __future__ import annotations

import json
from typing import Any

from deeplense_cli.cluster import SubmittedJob, wait
from deeplense_cli.commands.display import fmt_value
from deeplense_cli.core.console import err_console
from deeplense_cli.runs.rundir import RunDir


def follow_training(job: SubmittedJob) -> Any:
    """Stream a training job's progress (its JSON-lines output) until it ends; its result."""
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


def train_on_slurm(config: dict[str, Any], run: RunDir, resume: bool, follow: bool) -> None:
    """``train --slurm``: submit, print the job id (stdout) and, with ``follow``, its progress."""
    # Imported here: the job module loads the training engine, which `--help` must not pay for.
    from deeplense_cli.cluster.jobs import submit_training

    job = submit_training(config, run, resume)
    err_console().print(
        f"Submitted SLURM job {job.job_id} ({job.name}); run directory {run.path}; "
        f"follow with `deeplense jobs logs {job.job_id}`"
    )
    print(job.job_id)
    if follow:
        summary = follow_training(job)
        test = (summary or {}).get("test") or {}
        if test.get("mae") is not None:  # --task axion-mass
            err_console().print(
                f"Finished: test MAE {fmt_value(test['mae'])} dex of log10 axion mass "
                f"(predicting the mean: {fmt_value(test.get('mae_mean_predictor'))})"
            )
        elif test.get("accuracy") is not None:
            err_console().print(
                f"Finished: test accuracy {fmt_value(test['accuracy'])}, "
                f"macro AUC {fmt_value(test.get('macro_auc'))}"
            )
