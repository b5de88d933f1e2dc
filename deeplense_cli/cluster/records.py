"""The record of each submitted job, ``paths.home()/"jobs"/<jobid>.json``: what ``deeplense jobs``
lists (with its ``sacct`` state and the last line of its run's metrics) and where its logs are."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deeplense_cli.cluster.slurm import check_job_id, sacct_states
from deeplense_cli.core import paths
from deeplense_cli.core.atomic import write_json
from deeplense_cli.core.errors import DeepLenseError


def jobs_dir() -> Path:
    return paths.home() / "jobs"


def _record_path(job_id: str) -> Path:
    return jobs_dir() / f"{check_job_id(job_id)}.json"


def read_record(job_id: str) -> dict[str, Any]:
    path = _record_path(str(job_id))
    if not path.exists():
        raise DeepLenseError(
            f"no record of job {job_id} in {jobs_dir()}; `deeplense jobs` lists the jobs "
            "submitted from this DEEPLENSE_HOME"
        )
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeepLenseError(f"job record {path} is unreadable ({exc}); delete it") from None
    return record


def write_record(
    job: Any, name: str, run_dir: str | os.PathLike[str] | None, command: str
) -> dict[str, Any]:
    """Record a just-submitted submitit ``job``; ``command`` is the text shown for it."""
    record = {
        "job_id": str(job.job_id),
        "name": name,
        "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
        "folder": str(job.paths.folder),
        "stdout": str(job.paths.stdout),
        "stderr": str(job.paths.stderr),
        "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
    }
    write_json(_record_path(str(job.job_id)), record)
    return record


@dataclass
class JobInfo:
    job_id: str
    name: str
    state: str
    elapsed: str
    run_dir: str | None
    submitted: str
    command: str
    last_metric: dict[str, Any] | None


def last_metric(run_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The last JSON line of ``run_dir/metrics.jsonl`` (``None`` when absent or unreadable)."""
    if not run_dir:
        return None
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        return value if isinstance(value, dict) else None
    return None


def list_jobs(states: bool = True) -> list[JobInfo]:
    """The recorded jobs, oldest first, with their ``sacct`` state when SLURM answers."""
    folder = jobs_dir()
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    known: dict[str, tuple[str, str]] = {}
    if states and records and shutil.which("sacct"):
        try:
            known = sacct_states(r["job_id"] for r in records)
        except DeepLenseError:
            known = {}  # SLURM not answering: list the records, states UNKNOWN
    out = []
    for r in records:
        state, elapsed = known.get(str(r["job_id"]), ("UNKNOWN", ""))
        out.append(
            JobInfo(
                job_id=str(r["job_id"]),
                name=str(r.get("name", "")),
                state=state,
                elapsed=elapsed,
                run_dir=r.get("run_dir"),
                submitted=str(r.get("submitted", "")),
                command=str(r.get("command", "")),
                last_metric=last_metric(r.get("run_dir")),
            )
        )
    out.sort(key=lambda j: (j.submitted, _id_key(j.job_id)))
    return out


def _id_key(job_id: str) -> tuple[int, int]:
    base, _, task = job_id.partition("_")
    return int(base), int(task) if task else -1


def job_logs(job_id: str, err: bool = False) -> str:
    """The job's submitit stdout (or stderr) so far; empty when it has not started."""
    record = read_record(job_id)
    path = Path(record["stderr" if err else "stdout"])
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
