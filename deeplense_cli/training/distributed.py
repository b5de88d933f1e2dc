"""Several processes training one run: PyTorch DistributedDataParallel (DDP).

Each process (a *rank*) holds a copy of the model and takes its share of every global batch;
DDP averages the gradients, so all copies take the same step. Ranks are started by torchrun
(``deeplense train --nproc-per-node N``, or an external ``torchrun ... -m deeplense_cli train``)
or by ``srun`` under submitit (``deeplense train --slurm --nodes M ...``); either way the
rendezvous arrives in the usual variables: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``.

Backend: NCCL when the run trains on CUDA, gloo on the CPU. Rank 0 alone writes the run
folder; it also decides what depends on its clock (the time budget, stopping) and tells the
others (:func:`broadcast`), so every rank stops on the same step.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deeplense_cli.core.errors import DeepLenseError, first_line

if TYPE_CHECKING:
    import numpy as np

# How long a rank waits in a collective before giving up (env DEEPLENSE_DDP_TIMEOUT_S): long
# enough for rank 0 to build a data cache or save a checkpoint while the others wait.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Layout:
    """Where this process sits among the run's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def record(self) -> dict[str, Any]:
        """What config.yaml records of the layout the run trained with."""
        return {
            "world_size": self.world_size,
            "nodes": max(1, self.world_size // self.local_world_size),
            "processes_per_node": self.local_world_size,
            "backend": self.backend,
        }


_layout = Layout()


def layout() -> Layout:
    """This process's layout: one rank of one unless :func:`setup` joined a group."""
    return _layout


def launched(environ: dict[str, str] | None = None) -> bool:
    """True when a launcher (torchrun, srun under submitit) started this process as one of
    several ranks."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return False


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise DeepLenseError(f"distributed training: the launcher did not set {name}")
        return default
    try:
        return int(value)
    except ValueError:
        raise DeepLenseError(f"distributed training: {name}={value!r} is not a number") from None


def timeout_s() -> float:
    return float(os.environ.get("DEEPLENSE_DDP_TIMEOUT_S") or DEFAULT_TIMEOUT_S)


def setup(device: str) -> Layout:
    """Join the process group the launcher's variables describe; ``device`` is the run's
    ``train.device`` (auto, cpu, cuda...): NCCL on CUDA, gloo otherwise. Returns the layout
    and the device this rank trains on (CUDA: the GPU of its local rank)."""
    global _layout
    import faulthandler

    import torch
    import torch.distributed as dist

    # A rank aborted by the C++ runtime (SIGABRT) then prints every thread's Python stack to
    # its stderr: the intermittent gloo abort on CPUs has not been reproduced on demand.
    faulthandler.enable()
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    _env_int("MASTER_PORT")
    if not os.environ.get("MASTER_ADDR"):
        raise DeepLenseError("distributed training: the launcher did not set MASTER_ADDR")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    gpu = None
    if cuda:
        if not torch.cuda.is_available():
            raise DeepLenseError(f"rank {rank}: device {device!r} but CUDA is not available here")
        # the GPU of this local rank (one GPU visible per task, as some sites set it: that one)
        gpu = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(gpu)
    try:
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=_dt.timedelta(seconds=timeout_s()),
            device_id=gpu,  # NCCL: bound to this rank's GPU from the start
        )
        # A first collective: a rank that cannot reach the others fails here, before any
        # run folder exists, rather than in the middle of an epoch.
        dist.barrier()
    except Exception as exc:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise DeepLenseError(
            f"rank {rank} of {world} could not join the others at {where} ({backend}): "
            f"{first_line(exc)}"
        ) from None
    _layout = Layout(rank, world, local_rank, local_world, backend)
    return _layout


def peer_lost(exc: BaseException) -> bool:
    """True when ``exc`` is a collective that failed because another rank went away."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError)
        and any(word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed"))
    )


def train_device(config_device: str) -> str:
    """The device this rank trains on, for ``train.device``: its own GPU under NCCL."""
    if _layout.backend == "nccl":
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return config_device


def shutdown(clean: bool = False) -> None:
    """Leave the process group. ``clean``: every rank got here the same way (the run ended
    alike on all), so they first wait for each other: a gloo rank that tore its connections
    down while another still used them was aborted by the C++ runtime ("terminate called
    without an active exception"). After a failure the others may be gone: no waiting."""
    global _layout
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if clean and _layout.distributed:
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()
    _layout = Layout()


def leave() -> None:
    """End a launched rank other than rank 0 after a clean :func:`shutdown` (the run ended
    alike on every rank), without the interpreter's exit; rank 0 returns (trackers, files).
    The gloo abort above was always on rank 1, which exits first, and "terminate called
    without an active exception" is what C++ objects destroyed at exit (joinable threads)
    raise. A rank that failed exits normally: an early exit would race the one that says why."""
    import sys

    if os.environ.get("RANK") not in (None, "0") and launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a group)."""
    if not _layout.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if _layout.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _layout.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks (in float64)."""
    if not _layout.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if _layout.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def gather(array: np.ndarray) -> np.ndarray:
    """The ranks' arrays joined in rank order (every rank gets the whole)."""
    if not _layout.distributed:
        return array
    import numpy as np
    import torch.distributed as dist

    parts: list[Any] = [None] * _layout.world_size
    dist.all_gather_object(parts, array)
    return np.concatenate([p for p in parts if p is not None and len(p)], axis=0)


def share(n: int) -> slice:
    """This rank's contiguous part of ``n`` items (the first ranks take one more when ``n``
    does not divide); all parts together are the ``n`` items, each once."""
    base, extra = divmod(n, _layout.world_size)
    start = _layout.rank * base + min(_layout.rank, extra)
    return slice(start, start + base + (1 if _layout.rank < extra else 0))


def batch_rows(n: int) -> np.ndarray:
    """The positions in a global batch of ``n`` images that this rank trains on."""
    import numpy as np

    return np.arange(_layout.rank, n, _layout.world_size)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write: the run folder, a data cache), then the
    others; an error on rank 0 ends it there (the launcher stops the rest)."""
    if not _layout.distributed:
        yield
        return
    if not _layout.is_main:
        barrier()
    yield
    if _layout.is_main:
        barrier()
