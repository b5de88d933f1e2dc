"""A submitted job's handle, and following it to its end.

:func:`wait` streams a job's state and new stdout lines and returns what its callable
returned; :func:`follow` does the same from a job's record alone. Every way a job can fail
(an exception on the node, cancelled, out of time or memory) becomes one
:class:`DeepLenseError` with the remote traceback's last lines or the SLURM state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplense_cli.cluster.records import read_record
from deeplense_cli.cluster.slurm import TERMINAL_STATES, cancel, sacct_states
from deeplense_cli.core.errors import DeepLenseError, first_line

SACCT_PATIENCE_S = 60.0  # how long wait() follows a job while sacct keeps failing


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
        raise DeepLenseError(
            f"SLURM job {job.job_id} ({job.name}) did not complete: "
            f"{first_line(exc, 'no result')}; logs: {job.stdout_path}"
        ) from None
