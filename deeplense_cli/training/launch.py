"""``deeplense train --nproc-per-node N``: start N training processes on this machine with
torchrun's own launcher (``torch.distributed.run``), and say in one line how they ended.

Each process runs ``python -m deeplense_cli train ...`` with the same flags; the launcher's
variables (RANK, WORLD_SIZE, ...) make it one rank of the run (``training.distributed``).
When a process dies, torchrun stops the others; the run keeps its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence

from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.logs import quieted

# Seconds between torchrun's checks of its processes: a dead rank stops the rest this soon.
MONITOR_INTERVAL_S = 0.5
# Set for the processes this launcher starts: a rank that loses the others exits without a
# message of its own, since the launcher names the rank that failed.
LAUNCHER_ENV = "DEEPLENSE_LAUNCHER"
# Seconds the processes have to meet before the launch is given up.
JOIN_TIMEOUT_S = 60


def processes(value: str | int, cuda: bool) -> int:
    """``--nproc-per-node``: a count, or ``auto`` for the visible GPUs."""
    text = str(value).strip().lower()
    if text == "auto":
        import torch

        count = torch.cuda.device_count() if cuda else 0
        if count < 1:
            raise DeepLenseError(
                "--nproc-per-node auto counts the visible GPUs and this run has none; give a "
                "number of CPU processes (e.g. --nproc-per-node 2)"
            )
        return count
    try:
        n = int(text)
    except ValueError:
        raise DeepLenseError(
            f"--nproc-per-node {value!r} is not a number of processes or 'auto'"
        ) from None
    if n < 1:
        raise DeepLenseError(f"--nproc-per-node must be 1 or more, got {n}")
    if cuda:
        import torch

        if n > torch.cuda.device_count():
            raise DeepLenseError(
                f"--nproc-per-node {n} asks for more processes than the "
                f"{torch.cuda.device_count()} visible GPUs; use auto or --device cpu"
            )
    return n


def _rendezvous() -> list[str]:
    """A free port found by torchrun (``--standalone``), or the user's MASTER_PORT."""
    port = os.environ.get("MASTER_PORT")
    if not port:  # what torchrun's --standalone sets
        return [
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            "localhost:0",
            "--rdzv-id",
            str(uuid.uuid4()),
        ]
    if not port.isdigit():
        raise DeepLenseError(f"MASTER_PORT={port!r} is not a port number")
    return [
        "--rdzv-backend",
        "static",
        "--master-addr",
        os.environ.get("MASTER_ADDR") or "127.0.0.1",
        "--master-port",
        port,
        "--rdzv-id",
        str(uuid.uuid4()),
    ]


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """torchrun's agent logs each failure as a multi-line report; the one line is ours."""
    # its modules set their own levels: each one, not only the parent
    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]
    with quieted(["torch.distributed", *names], logging.CRITICAL):
        yield


def launch(nproc: int, args: Sequence[str], run_dir: str | None = None) -> None:
    """Run ``deeplense_cli <args>`` as ``nproc`` ranks of one group and wait for them.

    A process that fails or is killed ends the group. A killed one becomes one
    :class:`DeepLenseError` naming it (and ``run_dir``, to resume); one that failed has
    printed its error, and the launch exits with its code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    # One CPU thread each unless given (torchrun's default, set here to spare its warning);
    # the trainer then sizes torch's threads itself.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHER_ENV] = "1"
    argv = [
        *_rendezvous(),
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        "0",
        "--monitor-interval",
        str(MONITOR_INTERVAL_S),
        "--rdzv-conf",
        f"join_timeout={JOIN_TIMEOUT_S}",
        "-m",
        "deeplense_cli",
    ]
    parsed = get_args_parser().parse_args(argv)
    # set after parsing: argparse would take a flag of ours (--log) for an abbreviation of one
    # of torchrun's (--log-dir)
    parsed.training_script_args = list(args)
    config, cmd, cmd_args = config_from_args(parsed)
    try:
        with _quiet_launcher():
            elastic_launch(config, cmd)(*cmd_args)
    except ChildFailedError as exc:
        killed = [(r, f) for r, f in exc.failures.items() if f.exitcode < 0]
        if not killed:
            # a rank that failed said why in its own line (a run in use, bad data, a diverged
            # loss); the ranks it left waiting exit quietly
            raise SystemExit(exc.get_first_failure()[1].exitcode or 1) from None
        rank, failure = min(killed, key=lambda item: item[1].timestamp)
        resume = f"; resume with `deeplense train --resume {run_dir}`" if run_dir else ""
        raise DeepLenseError(
            f"rank {rank} of {nproc} (pid {failure.pid}) was killed by {failure.signal_name()}; "
            f"the other processes were stopped{resume}"
        ) from None
    except SignalException as exc:  # Ctrl+C or SIGTERM: torchrun stopped the processes
        raise KeyboardInterrupt from exc
    except Exception as exc:  # the rendezvous: a port taken, a store that does not answer
        raise DeepLenseError(
            f"the {nproc} training processes could not start together: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
