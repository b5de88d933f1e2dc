"""Starting a new training run, as ``deeplense train`` and ``api.train`` both do: refuse a
device this machine lacks before anything is written, make the run's folder (rank 0 of
several, which tells the others), and remove it again if the run fails before it could be
resumed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training import distributed


def check_device(config: dict[str, Any]) -> None:
    """Refuse a ``train.device`` (or ``train.amp``) this machine does not have."""
    # Imported here: it loads torch, which the command line imports only once it trains.
    from deeplense_cli.core.device import autocast_dtype, resolve_device

    autocast_dtype(resolve_device(str(config["train"]["device"])), str(config["train"]["amp"]))


@contextlib.contextmanager
def start_run(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    run_root: str | os.PathLike[str] | None = None,
    keep_failed: bool = False,
) -> Iterator[RunDir]:
    """The new run's folder for the block that trains it: ``run_dir`` (empty or new), else a
    new dated one under ``run_root``. Call :func:`check_device` first.

    Under several ranks, rank 0 makes it and tells the others. A run that fails before its
    first checkpoint leaves nothing behind: resuming it would only start it again. An
    interrupted run (Ctrl+C, SIGTERM) stays, and with ``keep_failed`` (a SLURM run, whose
    folder holds the job's logs) a failed one does too.
    """
    run = _make(config, run_dir, run_root)
    try:
        yield run
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        if distributed.layout().is_main:
            run.discard_unless_resumable(keep=keep_failed or interrupted)
        raise


def _make(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str] | None,
    run_root: str | os.PathLike[str] | None,
) -> RunDir:
    lay = distributed.layout()
    if not lay.distributed:
        return RunDir.for_config(config, run_dir, run_root)
    outcome: tuple[str, str] | None = None
    if lay.is_main:
        try:
            outcome = ("run", str(RunDir.for_config(config, run_dir, run_root).path))
        except DeepLenseError as exc:
            outcome = ("error", str(exc))
    kind, text = distributed.broadcast(outcome)
    if kind == "error":
        if lay.is_main:
            raise DeepLenseError(text)
        raise SystemExit(1)  # rank 0 says why
    return RunDir(text)
