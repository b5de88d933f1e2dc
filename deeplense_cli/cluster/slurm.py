"""Run deeplense work on a SLURM cluster through submitit.

The engine behind ``deeplense jobs`` and ``--slurm`` submissions. It submits a Python callable
as a SLURM job (or a job array), records each job under ``paths.home()/"jobs"/<jobid>.json``,
follows it (state from ``sacct``, new lines from its stdout file), cancels it and turns every
failure a user can hit into a one-line :class:`DeepLenseError`.

How jobs run: submitit pickles the callable and its arguments (cloudpickle) into the submitit
folder and the job runs ``<this interpreter> -m submitit.core._submit <folder>`` on the node.
So on a real cluster the virtual environment, the data and the submitit folder (by default
``run_root()/"slurm"/<jobid>``) must all be on a filesystem the compute nodes share; a
node-local ``/tmp`` does not work.

Preemption: submitit asks SLURM for ``--signal=USR2@90``. On that signal a job wrapped in
:class:`Resumable` is checkpointed (resubmitted with the same callable and arguments) and
requeued with ``scontrol requeue``; a job that SLURM requeues by itself (``scontrol requeue``,
node failure with ``--requeue``) simply runs again. Either way the callable is called again with
the same arguments, so it must resume from what it wrote to disk (its run directory).

Every subprocess call here has a timeout; nothing blocks forever.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deeplense_cli.core import paths
from deeplense_cli.core.atomic import write_json
from deeplense_cli.core.errors import DeepLenseError

NO_SLURM_HINT = "run on a cluster login node or start the local cluster with .ci/slurm.sh start"
NO_SLURM = f"SLURM not found: sbatch is not on PATH; {NO_SLURM_HINT}"
CMD_TIMEOUT_S = 20.0
SACCT_PATIENCE_S = 60.0  # how long wait() follows a job while sacct keeps failing
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
_MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


# --------------------------------------------------------------------------- options


@dataclass
class SlurmOptions:
    """What a job asks SLURM for.

    ``mem`` is per node in sbatch's syntax (``"4G"``, ``"500M"``); ``None`` uses the cluster's
    default (``DefMemPerCPU``). ``time`` is the wall-clock limit in minutes. ``extra`` holds
    further sbatch options by long name without dashes, e.g. ``{"constraint": "a100",
    "exclude": "node7"}``; ``True`` gives a bare flag.
    """

    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None
    time: int = 60
    account: str | None = None
    qos: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.gpus < 0:
            raise DeepLenseError(f"gpus must be 0 or more, got {self.gpus}")
        if self.cpus < 1:
            raise DeepLenseError(f"cpus must be 1 or more, got {self.cpus}")
        if self.time < 1:
            raise DeepLenseError(f"time is in minutes and must be 1 or more, got {self.time}")
        if self.mem is not None and not _MEM_RE.match(str(self.mem)):
            raise DeepLenseError(
                f"mem {self.mem!r} is not in sbatch's syntax; use e.g. '4G' or '500M'"
            )

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's ``AutoExecutor.update_parameters``."""
        params: dict[str, Any] = {"timeout_min": int(self.time), "cpus_per_task": int(self.cpus)}
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


# --------------------------------------------------------------------------- cluster


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
        proc = _run(["sinfo", "-h", "-o", "%P"], timeout=10)
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
    proc = _run(["sinfo", "-h", "-o", "%P"], timeout=10)
    if proc.returncode != 0:
        raise DeepLenseError(
            f"SLURM does not answer: `sinfo` failed ({proc.stderr.strip() or proc.returncode}); "
            "is slurmctld running? (locally: .ci/slurm.sh start)"
        )


def partitions() -> list[str]:
    """The cluster's partitions (the default one first is not guaranteed; ``*`` stripped)."""
    proc = _run(["sinfo", "-h", "-o", "%P"], timeout=10)
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


# --------------------------------------------------------------------------- records


def jobs_dir() -> Path:
    return paths.home() / "jobs"


def _record_path(job_id: str) -> Path:
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        raise DeepLenseError(f"{job_id!r} is not a SLURM job id (digits, or ARRAYID_TASK)")
    return jobs_dir() / f"{job_id}.json"


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


def _describe(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    target = fn.fn if isinstance(fn, Resumable) else fn
    name = getattr(target, "__qualname__", None) or type(target).__name__
    module = getattr(target, "__module__", None)
    if isinstance(fn, Resumable):
        args, kwargs = fn.args, fn.kwargs
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = f"{module + '.' if module else ''}{name}({', '.join(parts)})"
    return text if len(text) <= 300 else text[:297] + "..."


def _write_record(
    job: Any, name: str, run_dir: str | os.PathLike[str] | None, command: str
) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- submission


class Resumable:
    """A callable that survives preemption: submitit's ``checkpoint`` protocol.

    ``Resumable(fn, *args, **kwargs)()`` calls ``fn(*args, **kwargs)``. When SLURM signals the
    job (preemption or time limit), submitit calls :meth:`checkpoint`, which resubmits this same
    object, and requeues the job; when it runs again ``fn`` is called again with the same
    arguments. ``fn`` must therefore resume from its own files (e.g. the last checkpoint in its
    run directory) rather than start over.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise DeepLenseError(f"Resumable needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on USR2: resubmit the same callable with the same arguments."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class SubmittedJob:
    """A submitted job: its submitit handle plus the record written for ``deeplense jobs``."""

    job: Any  # submitit.Job
    record: dict[str, Any]

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def folder(self) -> Path:
        return Path(self.record["folder"])

    @property
    def stdout_path(self) -> Path:
        return Path(self.job.paths.stdout)

    @property
    def stderr_path(self) -> Path:
        return Path(self.job.paths.stderr)

    def state(self) -> str:
        """The job's current SLURM state (``PENDING`` until ``sacct`` knows it)."""
        return sacct_states([self.job_id]).get(self.job_id, ("PENDING", ""))[0]

    def done(self) -> bool:
        return self.job.paths.result_pickle.exists() or self.state() in TERMINAL_STATES

    def result(self, timeout: float | None = None, poll: float = 1.0) -> Any:
        """Wait for the job and return what the callable returned (see :func:`wait`)."""
        return wait(self, poll=poll, timeout=timeout)

    def cancel(self) -> None:
        cancel(self.job_id)


def _executor(folder: str | os.PathLike[str] | None, name: str, options: SlurmOptions) -> Any:
    require_slurm()
    options.validate()
    check_partition(options.partition)
    import submitit

    target = Path(folder) if folder is not None else paths.run_root() / "slurm" / "%j"
    Path(str(target).split("%")[0]).mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=target, cluster="slurm")
    try:
        executor.update_parameters(name=name, **options.executor_parameters())
    except ValueError as exc:
        raise DeepLenseError(f"invalid SLURM option: {exc}") from None
    return executor


def _default_name(fn: Callable[..., Any]) -> str:
    target = fn.fn if isinstance(fn, Resumable) else fn
    return str(getattr(target, "__name__", None) or type(target).__name__ or "deeplense")


def _sbatch_error(exc: BaseException) -> DeepLenseError:
    lines = [ln.strip().removeprefix("sbatch: error:").strip() for ln in str(exc).splitlines()]
    detail = "; ".join(dict.fromkeys(ln for ln in lines if ln)) or type(exc).__name__
    return DeepLenseError(f"sbatch refused the job: {detail}")


def submit(
    fn: Callable[..., Any],
    *args: Any,
    options: SlurmOptions | None = None,
    folder: str | os.PathLike[str] | None = None,
    name: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    command: str | None = None,
    **kwargs: Any,
) -> SubmittedJob:
    """Submit ``fn(*args, **kwargs)`` as one SLURM job and record it.

    ``folder`` is submitit's folder (pickles, logs; ``%j`` becomes the job id), by default
    ``run_root()/"slurm"/"%j"``; it must be on a filesystem the nodes share. ``run_dir`` is the
    deeplense run directory the job writes (shown by ``deeplense jobs``). ``command`` is the text
    shown for the job (default: the call itself).
    """
    import submitit

    options = options or SlurmOptions()
    name = name or _default_name(fn)
    executor = _executor(folder, name, options)
    try:
        # submitit also prints sbatch's stderr on failure; the error below says it once.
        with contextlib.redirect_stderr(io.StringIO()):
            job = executor.submit(fn, *args, **kwargs)
    except submitit.core.utils.FailedJobError as exc:
        raise _sbatch_error(exc) from None
    record = _write_record(job, name, run_dir, command or _describe(fn, args, kwargs))
    return SubmittedJob(job, record)


def submit_array(
    fn: Callable[..., Any],
    list_of_args: Iterable[Sequence[Any]],
    options: SlurmOptions | None = None,
    folder: str | os.PathLike[str] | None = None,
    name: str | None = None,
    parallelism: int | None = None,
    run_dirs: Sequence[str | os.PathLike[str] | None] | None = None,
) -> list[SubmittedJob]:
    """Submit ``fn(*args)`` for each ``args`` in ``list_of_args`` as one SLURM job array.

    At most ``parallelism`` tasks run at once (``--array=0-N%parallelism``). Returns one
    :class:`SubmittedJob` per task, ids ``ARRAYID_INDEX``, in the order of ``list_of_args``.
    """
    import submitit

    arg_lists = [tuple(a) for a in list_of_args]
    if not arg_lists:
        raise DeepLenseError("submit_array needs at least one set of arguments")
    if parallelism is not None and parallelism < 1:
        raise DeepLenseError(f"parallelism must be 1 or more, got {parallelism}")
    if run_dirs is not None and len(run_dirs) != len(arg_lists):
        raise DeepLenseError("run_dirs must have one entry per set of arguments")
    options = options or SlurmOptions()
    name = name or _default_name(fn)
    executor = _executor(folder, name, options)
    if parallelism is not None:
        executor.update_parameters(slurm_array_parallelism=int(parallelism))
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(fn, *a) for a in arg_lists]
    except submitit.core.utils.FailedJobError as exc:
        raise _sbatch_error(exc) from None
    out = []
    for i, (job, a) in enumerate(zip(jobs, arg_lists, strict=True)):
        run_dir = run_dirs[i] if run_dirs is not None else None
        out.append(SubmittedJob(job, _write_record(job, name, run_dir, _describe(fn, a, {}))))
    return out


# --------------------------------------------------------------------------- states


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


def cancel(job_id: str) -> None:
    """``scancel`` the job; an already finished job is a DeepLenseError saying so."""
    job_id = str(job_id)
    _record_path(job_id)  # validates the id
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


# --------------------------------------------------------------------------- waiting


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _failed_message(sj: SubmittedJob, trace: str) -> str:
    # Drop submitit's dashed frame and Python's ^^^ markers.
    lines = [ln for ln in trace.splitlines() if ln.strip() and not set(ln.strip()) <= set("-^~")]
    # submitit wraps the remote traceback between dashed lines, then names the log paths.
    trace_lines = [
        ln for ln in lines if not ln.startswith(("You can check", "or at paths", "  - "))
    ]
    if trace_lines and trace_lines[0].startswith("Job (task="):
        trace_lines = trace_lines[1:]
    last = trace_lines[-1].strip() if trace_lines else "unknown error"
    shown = "\n".join("    " + ln for ln in trace_lines[-6:])
    return (
        f"SLURM job {sj.job_id} ({sj.name}) failed: {last}\n"
        f"  remote traceback (last lines):\n{shown}\n"
        f"  full log: {sj.stderr_path}"
    )


def _uncompleted_message(sj: SubmittedJob, state: str) -> str:
    why = {
        "CANCELLED": "was cancelled",
        "TIMEOUT": "hit its time limit",
        "OUT_OF_MEMORY": "ran out of memory (ask for more with mem)",
        "NODE_FAIL": "lost its node",
        "PREEMPTED": "was preempted and not requeued",
    }.get(state, f"ended in state {state}")
    tail = _tail(sj.stderr_path, 5)
    tail_text = (
        ("\n  last lines of stderr:\n" + "\n".join("    " + t for t in tail.splitlines()))
        if tail
        else ""
    )
    return (
        f"SLURM job {sj.job_id} ({sj.name}) {why} before returning a result; "
        f"logs: {sj.stdout_path}{tail_text}"
    )


class _Follower:
    """Reads the lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        return lines


def follow(
    job_id: str,
    on_lines: Callable[[list[str]], None],
    poll: float = 1.0,
    timeout: float | None = None,
) -> str:
    """Stream a recorded job's new stdout lines to ``on_lines`` until it ends; its final state.

    Unlike :func:`wait` this needs only the job record (any job listed by ``deeplense jobs``)
    and returns the SLURM state instead of the result.
    """
    job_id = str(job_id)
    record = read_record(job_id)
    follower = _Follower(Path(record["stdout"]))
    start = time.monotonic()
    while True:
        lines = follower.new_lines()
        if lines:
            on_lines(lines)
        state = sacct_states([job_id]).get(job_id, ("PENDING", ""))[0]
        if state in TERMINAL_STATES:
            time.sleep(min(poll, 0.5))  # the last lines may land just after the state
            rest = follower.new_lines()
            if follower.partial:
                rest.append(follower.partial)
            if rest:
                on_lines(rest)
            return state
        if timeout is not None and time.monotonic() - start > timeout:
            raise DeepLenseError(f"job {job_id} is still {state} after {timeout:.0f} s")
        time.sleep(poll)


def wait(
    job: SubmittedJob,
    poll: float = 1.0,
    on_update: Callable[[str, list[str]], None] | None = None,
    timeout: float | None = None,
    grace: float = 5.0,
) -> Any:
    """Follow ``job`` until it ends and return the callable's result.

    Every ``poll`` seconds ``on_update(state, new_stdout_lines)`` is called when the state
    changed or the job printed something. Failures raise DeepLenseError: the remote exception
    (with the traceback's last lines), or the SLURM state of a job that ended without a result
    (cancelled, time limit, out of memory). ``grace`` bounds how long a finished job's result
    file may lag behind ``sacct`` (shared filesystems); ``timeout`` bounds the whole wait.
    """
    import submitit

    follower = _Follower(job.stdout_path)
    result_pickle = Path(job.job.paths.result_pickle)
    start = time.monotonic()
    last_state = ""
    ended_at: float | None = None
    sacct_failing_since: float | None = None
    while True:
        has_result = result_pickle.exists()
        try:
            state = "COMPLETED" if has_result else job.state()
            sacct_failing_since = None
        except DeepLenseError:
            # slurmdbd restarting or busy: keep following the files for a while.
            sacct_failing_since = sacct_failing_since or time.monotonic()
            if time.monotonic() - sacct_failing_since > SACCT_PATIENCE_S:
                raise
            state = last_state or "UNKNOWN"
        lines = follower.new_lines()
        if on_update is not None and (lines or state != last_state):
            on_update(state, lines)
        last_state = state
        if has_result:
            break
        if state in TERMINAL_STATES:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at >= grace:
                raise DeepLenseError(_uncompleted_message(job, state))
        if timeout is not None and time.monotonic() - start > timeout:
            raise DeepLenseError(
                f"SLURM job {job.job_id} ({job.name}) is still {state} after {timeout:.0f} s; "
                f"follow it with `deeplense jobs logs {job.job_id}` or cancel it with "
                f"`deeplense jobs cancel {job.job_id}`"
            )
        time.sleep(poll)
    if on_update is not None:
        rest = follower.new_lines()
        if follower.partial:
            rest.append(follower.partial)
        if rest:
            on_update("COMPLETED", rest)
    job.job._results_timeout_s = max(1, int(grace))  # the file is there: no long wait
    try:
        return job.job.result()
    except submitit.core.utils.FailedJobError as exc:
        raise DeepLenseError(_failed_message(job, str(exc))) from None
    except submitit.core.utils.UncompletedJobError as exc:
        # submitit's own "not requeued" outcome (e.g. preempted, not checkpointable).
        first = str(exc).strip().splitlines()
        raise DeepLenseError(
            f"SLURM job {job.job_id} ({job.name}) did not complete: "
            f"{first[0] if first else 'no result'}; logs: {job.stdout_path}"
        ) from None
