"""The SLURM jobs of ``train``, ``tune`` and ``benchmark``: what runs on the node, and the
submission of each.

Each entry point is called again with the same arguments after a requeue or preemption, so it
resumes from its own files: a run's last checkpoint, a search's Ray state, a benchmark cell's run.
Its stdout is JSON lines, which ``deeplense jobs logs`` and ``--wait`` show.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deeplense_cli.cluster.options import options_from_config
from deeplense_cli.cluster.slurm import check_partition, require_slurm
from deeplense_cli.cluster.submit import Resumable, submit, submit_array
from deeplense_cli.cluster.wait import SubmittedJob
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training import distributed
from deeplense_cli.training.benchmark import Cell, run_cell, write_table
from deeplense_cli.training.defaults import SLURM_DEFAULTS
from deeplense_cli.training.loop import evaluation_summary, train
from deeplense_cli.training.reporters import JsonlReporter
from deeplense_cli.tune import (
    STATE_FILE,
    TuneSettings,
    env_for_trials,
    experiment_dir,
    new_experiment_dir,
    ray_temp_dir,
    read_state,
    resume_tune,
    run_tune,
)

# Seconds between batch lines in a job's log: a progress sign without flooding the file.
BATCH_EVERY_S = 60.0

# --------------------------------------------------------------------------- train


def train_job(config: dict[str, Any], run_path: str) -> dict[str, Any]:
    """Train into ``run_path``, resuming from its last checkpoint when one exists, and return
    a summary. A job of several tasks is one run trained by as many DDP ranks: submitit's
    ``TorchDistributedEnvironment`` exports the rendezvous (the first node, a port from the
    job id), and on preemption rank 0 checkpoints and requeues the whole job."""
    run = RunDir(run_path)
    tasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if tasks > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        distributed.setup(str(config["train"]["device"]))
    clean = False
    try:
        # every rank decides alike: no rank writes the run before all have looked
        resume = run.checkpoint_path("last").exists()
        distributed.barrier()
        result = train(
            config, run, reporter=JsonlReporter(batch_every=BATCH_EVERY_S), resume=resume
        )
        clean = True
    finally:
        distributed.shutdown(clean)
    return {
        "run_dir": str(run.path),
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "best": result.best,
        "test": evaluation_summary(result.evaluation),
    }


def submit_training(config: dict[str, Any], run: RunDir, resume: bool) -> SubmittedJob:
    """Submit :func:`train_job` for a resolved ``config`` (its ``slurm`` section says what to
    ask for); submitit's files go to ``RUN/slurm/<job id>``."""
    require_slurm()
    options = options_from_config(config.get("slurm") or {})
    if options.tasks_per_node is None:  # one DDP rank per GPU asked for
        options.tasks_per_node = options.gpus or 1
    check_partition(options.partition)
    model = config["model"]["name"]
    return submit(
        Resumable(train_job, config, str(run.path)),
        options=options,
        folder=run.path / "slurm" / "%j",
        name=f"train-{model.lower()}",
        run_dir=run.path,
        command=f"deeplense train {'--resume ' if resume else ''}{model} -> {run.path}",
    )


# --------------------------------------------------------------------------- benchmark


def run_cell_job(cell: Cell, bench_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One cell, then refresh the table (so the table is complete when the last job of the
    array finishes)."""
    row = run_cell(cell, bench_dir, settings, reporter=JsonlReporter(batch_every=BATCH_EVERY_S))
    write_table(bench_dir)
    return row


class CellJob:
    """The callable of a benchmark array task. Its ``checkpoint`` method is submitit's
    preemption protocol: on requeue the same cell runs again and resumes its run."""

    def __call__(self, cell: Cell, bench_dir: str, settings: dict[str, Any]) -> dict[str, Any]:
        return run_cell_job(cell, bench_dir, settings)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_benchmark(
    cells: list[Cell],
    bench_dir: Path,
    settings: dict[str, Any],
    flags: dict[str, Any],
    parallelism: int | None,
) -> list[SubmittedJob]:
    """Submit ``cells`` as one job array. What each task asks for: the defaults, then the
    ``slurm`` section of the benchmark's config file, then ``flags`` (those not ``None``)."""
    require_slurm()
    section = dict(SLURM_DEFAULTS)
    section.update((settings["file_config"] or {}).get("slurm") or {})
    section.update({k: v for k, v in flags.items() if v is not None})
    options = options_from_config(section)
    check_partition(options.partition)
    bench_dir.mkdir(parents=True, exist_ok=True)
    return submit_array(
        CellJob(),
        [(cell, str(bench_dir), settings) for cell in cells],
        options=options,
        folder=bench_dir / "slurm" / "%j",
        name="benchmark",
        parallelism=parallelism,
        run_dirs=[bench_dir / "runs" / cell.key for cell in cells],
    )


# --------------------------------------------------------------------------- tune


def tune_job(request: dict[str, Any]) -> dict[str, Any]:
    """Run a search inside a SLURM allocation, with a Ray runtime on the job's CPUs/GPUs.

    ``request``: ``{"config", "space", "settings", "name"}`` for a new search or
    ``{"resume": NAME}``. Called again after a requeue (preemption), it resumes.
    """
    env = request.get("env") or {}
    os.environ.update(env)
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE") or 1)
    gpus = len([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()])
    job = os.environ.get("SLURM_JOB_ID", "local")
    temp = f"{ray_temp_dir()}-{job}"
    name = str(request.get("resume") or request["name"])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        num_cpus=cpus, num_gpus=gpus, _temp_dir=temp, include_dashboard=False, log_to_driver=False
    )
    try:
        if "resume" in request or (experiment_dir(name) / STATE_FILE).exists():
            outcome = resume_tune(name, on_event=_print_event)
        else:
            outcome = run_tune(
                request["config"],
                request["space"],
                TuneSettings(**request["settings"]),
                name=name,
                on_event=_print_event,
            )
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    return {
        "name": outcome.name,
        "path": str(outcome.path),
        "finished": outcome.finished,
        "best": asdict(outcome.best) if outcome.best else None,
        "best_config": str(outcome.best_config_path) if outcome.best_config_path else None,
    }


def _print_event(event: dict[str, Any]) -> None:
    print(json.dumps(event, default=str), flush=True)


def submit_tune(request: dict[str, Any], slurm_section: dict[str, Any]) -> SubmittedJob:
    """Submit :func:`tune_job` as one SLURM job (``slurm_section``: a config's ``slurm``
    section); its files (submitit's) go to ``tune/NAME/slurm/<job id>``."""
    options = options_from_config(slurm_section)
    name = str(request.get("resume") or request["name"])
    if "resume" in request:
        read_state(name)
        exp = experiment_dir(name)
    else:
        exp = new_experiment_dir(name)
    request = {**request, "env": env_for_trials()}
    return submit(
        Resumable(tune_job, request),
        options=options,
        folder=exp / "slurm" / "%j",
        name=f"tune-{name}",
        run_dir=exp,
        command=f"deeplense tune {'--resume ' + name if 'resume' in request else '--name ' + name}",
    )
