"""``deeplense jobs``: list, read the logs of and cancel the SLURM jobs submitted from here."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from deeplense_cli.core.console import console, print_json


def _metric_text(metric: dict[str, Any] | None) -> str:
    if not metric:
        return ""
    parts = []
    for key, value in metric.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, int | str):
            parts.append(f"{key}={value}")
        if len(parts) == 4:
            break
    return " ".join(parts)


@click.group(name="jobs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.pass_context
def jobs(ctx: click.Context, as_json: bool) -> None:
    """List, follow and cancel SLURM jobs.

    Without a subcommand: the jobs submitted from this DEEPLENSE_HOME with their SLURM state
    (from sacct), elapsed time, run directory and the last line of its metrics.jsonl.
    """
    if ctx.invoked_subcommand is not None:
        return
    # Imported here: `deeplense --help` loads every command and needs neither.
    from rich.table import Table

    from deeplense_cli import cluster

    infos = cluster.list_jobs()
    if as_json:
        print_json([dataclasses.asdict(info) for info in infos])
        return
    if not infos:
        console().print(f"No jobs recorded in {cluster.jobs_dir()}.")
        return
    table = Table(title="SLURM jobs")
    for col in ("job id", "name", "state", "elapsed", "run dir", "last metric"):
        table.add_column(col, overflow="fold")
    colors = {"COMPLETED": "green", "RUNNING": "cyan", "PENDING": "yellow", "FAILED": "red"}
    for info in infos:
        color = colors.get(info.state, "magenta" if info.state == "CANCELLED" else "white")
        table.add_row(
            info.job_id,
            info.name,
            f"[{color}]{info.state}[/{color}]",
            info.elapsed,
            info.run_dir or "",
            _metric_text(info.last_metric),
        )
    console().print(table)
    if any(info.state == "UNKNOWN" for info in infos) and not cluster.slurm_available():
        console().print(
            f"SLURM is not answering here, so states are UNKNOWN; {cluster.NO_SLURM_HINT}."
        )


@jobs.command(name="logs")
@click.argument("job_id")
@click.option("--err", is_flag=True, help="Show the job's stderr instead of its stdout.")
@click.option(
    "-f", "--follow", "follow", is_flag=True, help="Keep printing new output until the job ends."
)
def logs(job_id: str, err: bool, follow: bool) -> None:
    """Print the output of job JOB_ID so far."""
    from deeplense_cli import cluster

    if follow:
        if err:
            raise click.UsageError("--follow streams stdout; use --err without --follow")
        state = cluster.follow(job_id, lambda lines: click.echo("\n".join(lines)))
        click.echo(f"(job {job_id} ended: {state})", err=True)
        return
    text = cluster.job_logs(job_id, err=err)
    if not text:
        which = "stderr" if err else "stdout"
        click.echo(f"(job {job_id} has written nothing to {which} yet)", err=True)
        return
    click.echo(text, nl=not text.endswith("\n"))


@jobs.command(name="cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel job JOB_ID (scancel)."""
    from deeplense_cli import cluster

    cluster.cancel(job_id)
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "cancelled": True}))
    else:
        console().print(f"Cancelled SLURM job {job_id}.")
