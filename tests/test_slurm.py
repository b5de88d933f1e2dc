"""The SLURM layer against a real cluster (CI: `.ci/slurm.sh install && .ci/slurm.sh start`).

Jobs run this venv's interpreter on the node; the small job functions below are pickled by
value (cloudpickle) because tests/ is not importable from the job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from click.testing import CliRunner
from conftest import slurm_cluster_problem

from deeplense_cli import cluster
from deeplense_cli.cli import cli
from deeplense_cli.cluster.slurm import _expand_ids
from deeplense_cli.core.errors import DeepLenseError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


_PROBLEM = slurm_cluster_problem()
needs_cluster = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh DEEPLENSE_HOME; every job the test leaves behind is cancelled afterwards
    (the local cluster has 2 CPUs and is shared)."""
    # The job inherits the environment (sbatch --export=ALL), so it sees the same home.
    monkeypatch.setenv("DEEPLENSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEEPLENSE_RUN_ROOT", raising=False)
    yield tmp_path / "home"
    ids = sorted({p.stem.split("_")[0] for p in (tmp_path / "home" / "jobs").glob("*.json")})
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, timeout=20, check=False)


# ---- job functions (run on the node) ----------------------------------------------------


def add(a: int, b: int) -> int:
    print(f"adding {a} and {b}", flush=True)
    print(f"stderr says {a + b}", file=sys.stderr, flush=True)
    return a + b


def square(x: int) -> int:
    return x * x


def explode(galaxy: int) -> None:
    raise ValueError(f"bad lens {galaxy}")


def nap(seconds: float) -> str:
    print("napping", flush=True)
    time.sleep(seconds)
    return "woke"


def count_to(progress: str, n: int, step_s: float) -> dict[str, int]:
    """Resumable the way training is: continue from what the last run wrote down."""
    path = Path(progress)
    written = path.read_text().split() if path.exists() else []
    start = int(written[-1]) if written else 0
    print(
        f"resuming from {start} (restart {os.environ.get('SLURM_RESTART_COUNT', '0')})", flush=True
    )
    for i in range(start + 1, n + 1):
        time.sleep(step_s)
        with open(path, "a") as fh:
            fh.write(f"{i}\n")
    return {"started_at": start, "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


# ---- helpers ---------------------------------------------------------------------------


def _until(predicate, timeout: float, what: str, poll: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_requeued(job_id: str) -> None:
    """Wait until the requeue has put the job back in the queue.

    It is not released by hand (``scontrol update StartTime=now``): a requeued job that starts
    again before its old step credentials expire is killed by slurmd ("Job credential
    revoked") and ends FAILED. The test cluster keeps that hold short (cred_expire=10).
    """
    state = _until(
        lambda: (
            (s := cluster.sacct_states([job_id]).get(job_id, ("", ""))[0]) in ("PENDING",) and s
        ),
        30,
        f"job {job_id} back in PENDING after the requeue",
    )
    assert state == "PENDING"


# ---- no SLURM --------------------------------------------------------------------------


def test_no_slurm_on_path_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert cluster.slurm_available() is False
    with pytest.raises(DeepLenseError) as err:
        cluster.submit(add, 1, 2)
    assert str(err.value) == cluster.NO_SLURM
    assert "sbatch is not on PATH" in str(err.value) and ".ci/slurm.sh start" in str(err.value)
    # Records made elsewhere still list, with states UNKNOWN and a hint.
    record = {"job_id": "7", "name": "old", "run_dir": None, "submitted": "2026-01-01T00:00:00"}
    (home / "jobs").mkdir(parents=True)
    (home / "jobs" / "7.json").write_text(json.dumps(record))
    listed = CliRunner().invoke(cli, ["jobs"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    assert "UNKNOWN" in listed.output and "SLURM is not answering" in listed.output
    assert json.loads(CliRunner().invoke(cli, ["jobs", "--json"]).output)[0]["state"] == "UNKNOWN"
    result = CliRunner().invoke(cli, ["jobs", "cancel", "12"])
    assert result.exit_code == 1
    assert "SLURM not found" in result.output
    assert "Traceback" not in result.output


def test_options_are_validated_before_anything_runs() -> None:
    with pytest.raises(DeepLenseError, match="mem"):
        cluster.SlurmOptions(mem="lots").validate()
    with pytest.raises(DeepLenseError, match="gpus"):
        cluster.SlurmOptions(gpus=-1).validate()
    params = cluster.SlurmOptions(
        partition="gpu", gpus=2, cpus=8, mem="32g", time=90
    ).executor_parameters()
    assert params == {
        "timeout_min": 90,
        "cpus_per_task": 8,
        "gpus_per_node": 2,
        "slurm_partition": "gpu",
        "slurm_mem": "32G",
    }


@pytest.mark.parametrize(
    "value, minutes",
    [
        (None, 240),  # the default section's 04:00:00
        (90, 90),  # a number in a config file: minutes
        (90.7, 90),
        ("90", 90),  # a bare number is minutes, as sbatch reads --time
        ("15", 15),
        ("0", 1),
        ("90:30", 91),  # MM:SS, rounded up to whole minutes
        ("00:10:00", 10),
        ("04:00:00", 240),
        ("1-12", 2160),
        ("1-12:30", 2190),
        ("1-00:00:30", 1441),
        ("2h", 120),  # units, as --time-budget reads them
        ("1h30m", 90),
        ("90s", 2),
        ("1.5h", 90),
        ("1d", 1440),
    ],
)
def test_time_limit_reads_sbatch_syntax_and_units(value: object, minutes: int) -> None:
    assert cluster.time_limit_minutes(value) == minutes
    assert cluster.options_from_config({"time": value}).time == minutes


def test_bad_time_limit_is_an_error() -> None:
    with pytest.raises(DeepLenseError, match="cannot read time limit 'soon'"):
        cluster.time_limit_minutes("soon")


def test_expand_pending_array_ids() -> None:
    assert _expand_ids("41_[1-3%2]") == ["41_1", "41_2", "41_3"]
    assert _expand_ids("41_[0,4]") == ["41_0", "41_4"]
    assert _expand_ids("41_2") == ["41_2"]


# ---- against the real cluster ----------------------------------------------------------


@pytest.mark.slurm
@needs_cluster
def test_submit_returns_the_result_and_records_the_job(home: Path, tmp_path: Path) -> None:
    assert cluster.slurm_available()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t0 = time.monotonic()
    job = cluster.submit(add, 2, 3, name="adder", run_dir=run_dir)
    seen: list[tuple[str, list[str]]] = []
    assert (
        cluster.wait(job, poll=0.2, on_update=lambda s, lines: seen.append((s, lines)), timeout=60)
        == 5
    )
    roundtrip = time.monotonic() - t0
    print(f"sbatch roundtrip: {roundtrip:.2f} s")
    assert any("adding 2 and 3" in line for _, lines in seen for line in lines)
    record = json.loads((home / "jobs" / f"{job.job_id}.json").read_text())
    assert record["name"] == "adder"
    assert record["run_dir"] == str(run_dir.resolve())
    assert record["folder"] == str(home / "runs" / "slurm" / job.job_id)
    assert "add(2, 3)" in record["command"]
    assert "adding 2 and 3" in cluster.job_logs(job.job_id)


@pytest.mark.slurm
@needs_cluster
def test_job_array_respects_parallelism(home: Path) -> None:
    jobs = cluster.submit_array(square, [(1,), (2,), (3,)], name="squares", parallelism=2)
    assert len(jobs) == 3
    array_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(array_ids) == 1
    array_id = array_ids.pop()
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    script = (home / "runs" / "slurm" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%2" in script
    throttle = subprocess.run(
        ["scontrol", "show", "job", array_id], capture_output=True, text=True, timeout=20
    ).stdout
    assert "ArrayTaskThrottle=2" in throttle or not throttle  # gone already if all finished
    assert [cluster.wait(j, poll=0.2, timeout=60) for j in jobs] == [1, 4, 9]
    assert sorted(p.stem for p in (home / "jobs").glob("*.json")) == sorted(j.job_id for j in jobs)


@pytest.mark.slurm
@needs_cluster
def test_failing_job_shows_the_remote_traceback(home: Path) -> None:
    job = cluster.submit(explode, 42, name="exploder")
    with pytest.raises(DeepLenseError) as err:
        cluster.wait(job, poll=0.2, timeout=60)
    message = str(err.value)
    assert f"SLURM job {job.job_id} (exploder) failed: ValueError: bad lens 42" in message
    assert ", in explode" in message  # the remote traceback's last lines
    assert str(job.stderr_path) in message


@pytest.mark.slurm
@needs_cluster
def test_cancelled_job_is_a_clear_error_without_hanging(home: Path) -> None:
    job = cluster.submit(nap, 120, name="sleeper")
    _until(lambda: job.state() == "RUNNING", 30, "the job to start")
    with pytest.raises(
        DeepLenseError, match=f"job {job.job_id} \\(sleeper\\) is still RUNNING after 1 s"
    ):
        cluster.wait(job, poll=0.2, timeout=1)
    t0 = time.monotonic()
    cluster.cancel(job.job_id)
    with pytest.raises(DeepLenseError) as err:
        cluster.wait(job, poll=0.2, timeout=60)
    assert time.monotonic() - t0 < 15
    assert f"SLURM job {job.job_id} (sleeper) was cancelled before returning a result" in str(
        err.value
    )
    with pytest.raises(DeepLenseError, match="already finished"):
        cluster.cancel(job.job_id)


@pytest.mark.slurm
@needs_cluster
def test_unknown_partition_is_refused_before_submitting(home: Path) -> None:
    with pytest.raises(DeepLenseError) as err:
        cluster.submit(add, 1, 1, options=cluster.SlurmOptions(partition="no-such-queue"))
    assert "unknown SLURM partition 'no-such-queue'" in str(err.value)
    assert "debug" in str(err.value)
    assert not (home / "jobs").exists()


@pytest.mark.slurm
@needs_cluster
def test_job_the_cluster_cannot_hold_is_refused_clearly(
    home: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(DeepLenseError) as err:
        cluster.submit(add, 1, 1, options=cluster.SlurmOptions(extra={"mem": "999999G"}))
    assert str(err.value).startswith("sbatch refused the job: ")
    assert "Memory specification can not be satisfied" in str(err.value)
    assert "sbatch: error" not in capfd.readouterr().err  # said once, in the error
    assert not (home / "jobs").exists()


@pytest.mark.slurm
@needs_cluster
def test_jobs_command_lists_shows_logs_and_cancels(home: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "val_auc": 0.71})
        + "\n"
        + json.dumps({"epoch": 2, "val_auc": 0.8125})
        + "\n"
    )
    done = cluster.submit(add, 20, 22, name="answer", run_dir=run_dir)
    assert done.result(timeout=60, poll=0.2) == 42
    sleeper = cluster.submit(nap, 120, name="sleeper")
    _until(lambda: sleeper.state() == "RUNNING", 30, "the sleeper to start")
    _until(lambda: done.state() == "COMPLETED", 15, "sacct to show COMPLETED")
    runner = CliRunner()

    listed = runner.invoke(cli, ["jobs"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if f" {done.job_id} " in line)
    assert "answer" in row and "COMPLETED" in row and "epoch=2" in row
    assert "RUNNING" in next(line for line in listed.output.splitlines() if "sleeper" in line)

    as_json = json.loads(runner.invoke(cli, ["jobs", "--json"]).output)
    by_id = {j["job_id"]: j for j in as_json}
    assert by_id[done.job_id]["last_metric"] == {"epoch": 2, "val_auc": 0.8125}
    assert by_id[sleeper.job_id]["state"] == "RUNNING"

    logs = runner.invoke(cli, ["jobs", "logs", done.job_id])
    assert logs.exit_code == 0 and "adding 20 and 22" in logs.output
    err = runner.invoke(cli, ["jobs", "logs", done.job_id, "--err"])
    assert err.exit_code == 0 and "stderr says 42" in err.output and "adding" not in err.output

    short = cluster.submit(nap, 1.5, name="short")
    followed = runner.invoke(cli, ["jobs", "logs", short.job_id, "--follow"])
    assert followed.exit_code == 0, followed.output
    assert "napping" in followed.output and "Job completed successfully" in followed.output
    assert f"(job {short.job_id} ended: COMPLETED)" in followed.output

    cancelled = runner.invoke(cli, ["jobs", "cancel", sleeper.job_id])
    assert cancelled.exit_code == 0 and f"Cancelled SLURM job {sleeper.job_id}" in cancelled.output
    _until(lambda: sleeper.state() == "CANCELLED", 15, "sacct to show CANCELLED")

    again = runner.invoke(cli, ["jobs", "cancel", done.job_id])
    assert again.exit_code == 1 and "already finished" in again.output
    unknown = runner.invoke(cli, ["jobs", "logs", "999999"])
    assert unknown.exit_code == 1 and "no record of job 999999" in unknown.output
    bad = runner.invoke(cli, ["jobs", "logs", "../etc/passwd"])
    assert bad.exit_code == 1 and "is not a SLURM job id" in bad.output


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_requeued_job_resumes_and_finishes(home: Path, tmp_path: Path) -> None:
    progress = tmp_path / "progress.txt"
    t0 = time.monotonic()
    job = cluster.submit(cluster.Resumable(count_to, str(progress), 30, 0.25))
    assert job.name == "count_to"
    _until(lambda: len(_lines(progress)) >= 4, 30, "progress before the requeue")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=20)
    _wait_requeued(job.job_id)
    result = cluster.wait(job, poll=0.3, timeout=90)
    print(f"requeue roundtrip: {time.monotonic() - t0:.1f} s")
    assert result["restarts"] == 1
    assert result["started_at"] >= 4  # resumed, did not start over
    assert _lines(progress) == [str(i) for i in range(1, 31)]  # every step once, in order
    log = cluster.job_logs(job.job_id)
    assert "resuming from 0 (restart 0)" in log
    assert f"resuming from {result['started_at']} (restart 1)" in log


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_preemption_signal_checkpoints_and_requeues(home: Path, tmp_path: Path) -> None:
    """USR2 is what SLURM sends before preemption/time limit (--signal=USR2@90)."""
    progress = tmp_path / "progress.txt"
    job = cluster.submit(cluster.Resumable(count_to, str(progress), 30, 0.25), name="preempted")
    _until(lambda: len(_lines(progress)) >= 4, 30, "progress before the signal")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=20)
    _wait_requeued(job.job_id)
    result = cluster.wait(job, poll=0.3, timeout=90)
    assert result["restarts"] == 1 and result["started_at"] >= 4
    assert _lines(progress) == [str(i) for i in range(1, 31)]
    assert "Caught signal SIGUSR2" in cluster.job_logs(job.job_id, err=True)
