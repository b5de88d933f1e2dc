"""`train --slurm` and `benchmark --slurm` on the real local SLURM cluster, including a
requeue in the middle of training (the job resumes from its last checkpoint)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import slurm_cluster_problem

from deeplense_cli.cli import cli
from deeplense_cli.runs.rundir import RunDir

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(slurm_cluster_problem() is not None, reason=str(slurm_cluster_problem())),
]

SLURM = ["--slurm", "--partition", "debug", "--cpus", "1", "--time", "15"]


def _train_args(sim_root: Path, run_dir: Path, epochs: int) -> list[str]:
    return [
        "train",
        "-m",
        "resnet18",
        "--dataset",
        "Model_III",
        "--data-root",
        str(sim_root),
        "--run-dir",
        str(run_dir),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--num-threads",
        "1",
    ]


def _cancel_all(home: Path) -> None:
    ids = sorted({p.stem.split("_")[0] for p in (home / "jobs").glob("*.json")})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=20, check=False)


def test_train_slurm_wait_runs_and_evaluates(
    sim_root: Path, tmp_path: Path, deeplense_home: Path
) -> None:
    run_dir = tmp_path / "run"
    try:
        args = [*_train_args(sim_root, run_dir, 1), *SLURM, "--wait", "--log", "tensorboard"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "Submitted SLURM job" in " ".join(result.output.split())
        run = RunDir.open(run_dir)
        assert [r["epoch"] for r in run.read_metrics()] == [1]
        # the job logged like a local run: the tracker settings travel in the config
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tracking = json.loads((run_dir / "tracking.json").read_text())
        assert tracking["status"] == "finished" and "tensorboard" in tracking["loggers"]
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        logged = [(e.step, e.value) for e in events.Scalars("val_accuracy")]
        assert logged == [(1, pytest.approx(run.read_metrics()[0]["val_accuracy"]))]
        assert json.loads((run.evaluation_dir / "metrics.json").read_text())["n"] == 24
        jobs = CliRunner().invoke(cli, ["jobs", "--json"])
        assert jobs.exit_code == 0, jobs.output
        listed = json.loads(jobs.output)
        assert any(str(run_dir) in json.dumps(j) for j in listed)
    finally:
        _cancel_all(deeplense_home)


def test_requeued_training_job_resumes_without_losing_epochs(
    sim_root: Path, tmp_path: Path, deeplense_home: Path
) -> None:
    run_dir = tmp_path / "requeue"
    try:
        result = CliRunner().invoke(cli, [*_train_args(sim_root, run_dir, 4), *SLURM])
        assert result.exit_code == 0, result.output
        job_id = result.stdout.strip().splitlines()[-1]
        run = RunDir(run_dir)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(run.read_metrics()) < 2:
            time.sleep(0.5)
        before = run.read_metrics()
        assert len(before) >= 2, "training did not reach epoch 2 in time"
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=20)
        # No `scontrol update StartTime=now`: released before its old credentials expire, the
        # job would be killed ("Job credential revoked"); the test cluster holds it 10 s.
        _wait_until_done(job_id, run, 400)
        after = run.read_metrics()
        assert [r["epoch"] for r in after] == [1, 2, 3, 4]
        assert after[: len(before)] == before  # completed epochs survived the requeue
        assert (run.evaluation_dir / "metrics.json").exists()
        log = CliRunner().invoke(cli, ["jobs", "logs", job_id])
        assert log.exit_code == 0
    finally:
        _cancel_all(deeplense_home)


def _wait_for_epochs(run: RunDir, epochs: int, seconds: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(run.read_metrics()) < epochs:
        time.sleep(0.5)
    return run.read_metrics()


def _wait_until_done(job_id: str, run: RunDir, seconds: float) -> None:
    """Until SLURM says the job ended (a completed one: once its evaluation is written)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.split()
        ended = out and out[-1] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
        if ended and (out[-1] != "COMPLETED" or (run.evaluation_dir / "metrics.json").exists()):
            return
        time.sleep(2)


def test_two_task_job_trains_one_ddp_run_and_resumes_after_requeue(
    sim_root: Path, tmp_path: Path, deeplense_home: Path
) -> None:
    """--nproc-per-node 2 with --slurm: one job of 2 tasks (srun), submitit exporting the
    rendezvous; rank 0 writes the run; requeued, the whole job resumes from last.pt."""
    import yaml

    run_dir = tmp_path / "ddp"
    args = [*_train_args(sim_root, run_dir, 4), *SLURM, "--nproc-per-node", "2"]
    try:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        job_id = result.stdout.strip().splitlines()[-1]
        run = RunDir(run_dir)
        before = _wait_for_epochs(run, 2, 300)
        assert len(before) >= 2, "training did not reach epoch 2 in time"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["distributed"]["world_size"] == 2
        assert config["slurm"]["tasks_per_node"] == 2
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=20)
        _wait_until_done(job_id, run, 400)
        after = run.read_metrics()
        assert [r["epoch"] for r in after] == [1, 2, 3, 4]
        assert after[: len(before)] == before
        assert json.loads((run.evaluation_dir / "metrics.json").read_text())["n"] == 24
        # both tasks ran; only rank 0 reported (its log holds the JSON lines)
        logs = sorted((run_dir / "slurm" / job_id).glob(f"{job_id}_*_log.out"))
        assert len(logs) == 2, logs
        assert '"event": "epoch"' in logs[0].read_text()
        assert '"event"' not in logs[1].read_text()
    finally:
        _cancel_all(deeplense_home)


def test_benchmark_slurm_array_writes_table(
    sim_root: Path, tmp_path: Path, deeplense_home: Path
) -> None:
    out = tmp_path / "bench"
    try:
        result = CliRunner().invoke(
            cli,
            [
                "benchmark",
                "--models",
                "resnet18,cct",
                "--datasets",
                "Model_III",
                "--out",
                str(out),
                "--data-root",
                str(sim_root),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                *SLURM,
                "--parallelism",
                "1",
                "--wait",
            ],
        )
        assert result.exit_code == 0, result.output
        table = (out / "results.md").read_text()
        assert "| ResNet18 |" in table and "| CCT |" in table
    finally:
        _cancel_all(deeplense_home)


def test_slurm_errors_are_one_line(sim_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [*_train_args(sim_root, tmp_path / "x", 1), "--slurm", "--partition", "nosuchpartition"],
    )
    assert result.exit_code == 1
    assert "nosuchpartition" in result.output and "Traceback" not in result.output
