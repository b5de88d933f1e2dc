"""Submitting a Python callable as a SLURM job (or a job array) through submitit.

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
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from deeplense_cli.cluster.options import SlurmOptions
from deeplense_cli.cluster.records import write_record
from deeplense_cli.cluster.slurm import check_partition, require_slurm
from deeplense_cli.cluster.wait import SubmittedJob
from deeplense_cli.core import paths
from deeplense_cli.core.errors import DeepLenseError


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


def _describe(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The text ``deeplense jobs`` shows for a job: the call, cut at 300 characters."""
    target = fn.fn if isinstance(fn, Resumable) else fn
    name = getattr(target, "__qualname__", None) or type(target).__name__
    module = getattr(target, "__module__", None)
    if isinstance(fn, Resumable):
        args, kwargs = fn.args, fn.kwargs
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    text = f"{module + '.' if module else ''}{name}({', '.join(parts)})"
    return text if len(text) <= 300 else text[:297] + "..."


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
    record = write_record(job, name, run_dir, command or _describe(fn, args, kwargs))
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
        out.append(SubmittedJob(job, write_record(job, name, run_dir, _describe(fn, a, {}))))
    return out
