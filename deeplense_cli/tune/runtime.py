"""The Ray runtime a search runs in: this process's, a cluster's, or a local one started for it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.logs import quieted
from deeplense_cli.tune.settings import TuneSettings


def ray_temp_dir() -> str:
    """A short session directory: Ray's Unix sockets live there and are capped at 107 bytes."""
    return f"/tmp/ray-dl-{os.getuid()}"


@contextlib.contextmanager
def ray_runtime(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[None]:
    """Use the Ray runtime this process already has, or connect/start one for the block."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # One small checkpoint per epoch is how deeplense trials work; Ray would warn each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's newer console output prints its own banner even at verbose=0; deeplense prints
    # progress itself (on_event) and the final table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        _check_reachable(address)
        # A cluster's own settings stand; trials' checkpoints and deeplense runs are written
        # under the run root, which every node must share (Ray no longer syncs trial files).
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeepLenseError(
                f"cannot connect to the Ray cluster at {address}: {first_line(exc)}; is "
                "`ray start --head` running there?"
            ) from None
    else:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _temp_dir=ray_temp_dir(),
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nobody listens at (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise DeepLenseError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DeepLenseError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; is "
            "`ray start --head` running there?"
        ) from None


def check_resources(settings: TuneSettings) -> float:
    """GPUs per trial; a trial that asks for more CPUs or GPUs than the cluster has is an error."""
    import ray

    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if settings.cpus_per_trial > cpus:
        raise DeepLenseError(
            f"--cpus-per-trial {settings.cpus_per_trial:g} is more than the Ray cluster has "
            f"({cpus:g} CPUs)"
        )
    if settings.gpus_per_trial is None:
        return 1.0 if gpus >= 1 else 0.0
    if settings.gpus_per_trial > gpus:
        raise DeepLenseError(
            f"--gpus-per-trial {settings.gpus_per_trial:g} but the Ray cluster has "
            f"{gpus:g} GPUs; use --gpus-per-trial 0 to train on CPUs"
        )
    return float(settings.gpus_per_trial)


@contextlib.contextmanager
def quiet_analysis() -> Iterator[None]:
    """Ray warns about trials without results (pending ones); deeplense reports them itself."""
    with quieted(["ray.tune.analysis.experiment_analysis"], logging.ERROR):
        yield


# Ray Tune's own loggers: its "stop signal received" and "resume with ..." lines.
_RAY_TUNE_LOGGERS = ("ray.tune", "ray.tune.tune")


@contextlib.contextmanager
def ctrl_c_stops_search() -> Iterator[threading.Event]:
    """Ctrl+C in the block stops the search as Ray Tune's own handler does (it saves the
    experiment once more, so ``--resume`` continues it), and sets the event yielded: the
    command then ends "Interrupted." with status 130 where Ray returned as if it had finished.
    A second Ctrl+C does not wait for that last save. Ray's log lines about it are silenced;
    deeplense says what to do itself."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted  # signal handlers belong to the main thread
        return
    previous = signal.getsignal(signal.SIGINT)
    env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    levels = {name: logging.getLogger(name).level for name in _RAY_TUNE_LOGGERS}

    def on_ctrl_c(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        for name in _RAY_TUNE_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        signal.raise_signal(signal.SIGUSR1)  # Ray's graceful stop, which it always listens to

    # Ray then leaves SIGINT to us, and stops on SIGUSR1 as it would on its own SIGINT.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        if env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
