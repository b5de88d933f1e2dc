"""The Ray runtime a search runs in: this process's, a cluster's, or a local one started for it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from deeplense_cli.core.errors import DeepLenseError, first_line
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
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
