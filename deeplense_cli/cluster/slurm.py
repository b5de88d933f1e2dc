"""Talking to SLURM's commands: is it there, its partitions, job states, cancelling.

Every call has a timeout, so nothing blocks forever; a missing binary or a silent controller
becomes a one-line :class:`DeepLenseError` that says what to do.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from deeplense_cli.core.errors import DeepLenseError

NO_SLURM_HINT = "run on a cluster login node or start the local cluster with .ci/slurm.sh start"
NO_SLURM = f"SLURM not found: sbatch is not on PATH; {NO_SLURM_HINT}"
CMD_TIMEOUT_S = 20.0
# States after which a job will not run again (sacct's State column, first word).
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)


# The partitions, one a line, no header: whether SLURM answers, and what it offers.
SINFO_PARTITIONS = ("sinfo", "-h", "-o", "%P")


def _run(cmd: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command with a timeout; a missing binary or a hang becomes DeepLenseError."""
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise DeepLenseError(NO_SLURM if cmd[0] == "sbatch" else f"{cmd[0]}: {NO_SLURM}") from None
    except subprocess.TimeoutExpired:
        raise DeepLenseError(
            f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s: is slurmctld running? "
            "(`sinfo` should answer; locally: .ci/slurm.sh status)"
        ) from None


def slurm_available() -> bool:
    """True when ``sbatch`` and ``srun`` are on PATH and the controller answers ``sinfo``."""
    if not (shutil.which("sbatch") and shutil.which("srun") and shutil.which("sinfo")):
        return False
    try:
        proc = _run(SINFO_PARTITIONS, timeout=10)
    except DeepLenseError:
        return False
    return proc.returncode == 0


def require_slurm() -> None:
    """Raise a DeepLenseError that says what to do when SLURM cannot take jobs here."""
    if not shutil.which("sbatch"):
        raise DeepLenseError(NO_SLURM)
    if not shutil.which("srun"):
        raise DeepLenseError(
            "SLURM incomplete: sbatch is on PATH but srun is not; install the SLURM client tools"
        )
    proc = _run(SINFO_PARTITIONS, timeout=10)
    if proc.returncode != 0:
        raise DeepLenseError(
            f"SLURM does not answer: `sinfo` failed ({proc.stderr.strip() or proc.returncode}); "
            "is slurmctld running? (locally: .ci/slurm.sh start)"
        )


def partitions() -> list[str]:
    """The cluster's partitions (the default one first is not guaranteed; ``*`` stripped)."""
    proc = _run(SINFO_PARTITIONS, timeout=10)
    if proc.returncode != 0:
        raise DeepLenseError(f"`sinfo` failed: {proc.stderr.strip()}")
    names = [line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()]
    return list(dict.fromkeys(names))


def check_partition(partition: str | None) -> None:
    if partition is None:
        return
    known = partitions()
    if partition not in known:
        raise DeepLenseError(
            f"unknown SLURM partition {partition!r}; this cluster has: {', '.join(known) or 'none'} "
            "(see `sinfo`)"
        )


def check_job_id(job_id: str) -> str:
    """``job_id`` when it is a SLURM job id (digits, or ARRAYID_TASK); it also names files."""
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        raise DeepLenseError(f"{job_id!r} is not a SLURM job id (digits, or ARRAYID_TASK)")
    return job_id


def _expand_ids(job_id: str) -> list[str]:
    """``12_[0-2%2]`` (pending array tasks) -> ``12_0 12_1 12_2``; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[(.+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(f"{base}_{i}" for i in range(int(lo), int(hi) + 1))
        elif part.isdigit():
            out.append(f"{base}_{part}")
    return out


def sacct_states(job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{job_id: (STATE, elapsed)}`` from ``sacct -X -n -P``; ids sacct does not know are absent."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    proc = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "JobID,State,Elapsed"])
    if proc.returncode != 0:
        raise DeepLenseError(
            f"`sacct` failed: {proc.stderr.strip() or proc.returncode}; job states need SLURM "
            "accounting (slurmdbd)"
        )
    states: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"
        for jid in _expand_ids(parts[0]):
            states[jid] = (state, parts[2])
    return states


def cancel(job_id: str) -> None:
    """``scancel`` the job; an already finished job is a DeepLenseError saying so."""
    job_id = check_job_id(str(job_id))
    if not shutil.which("scancel"):
        raise DeepLenseError(NO_SLURM)
    state = sacct_states([job_id]).get(job_id, ("", ""))[0]
    if state in TERMINAL_STATES:
        raise DeepLenseError(f"job {job_id} has already finished ({state}); nothing to cancel")
    proc = _run(["scancel", job_id])
    text = (proc.stderr + proc.stdout).strip()
    if proc.returncode != 0 or "error" in text.lower():
        if "already" in text.lower() or "completed" in text.lower():
            raise DeepLenseError(f"job {job_id} has already finished; nothing to cancel")
        if "invalid job id" in text.lower():
            raise DeepLenseError(f"SLURM does not know job {job_id} (`squeue` / `sacct -j`)")
        raise DeepLenseError(f"scancel {job_id} failed: {text or proc.returncode}")
