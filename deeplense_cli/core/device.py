"""Choosing where PyTorch runs, and CPU threading that behaves on shared machines."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

from deeplense_cli.core.cpu import cpu_flags
from deeplense_cli.core.errors import DeepLenseError

if TYPE_CHECKING:
    import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


#: OpenMP spin-wait before a thread sleeps, in libgomp's iterations (its default 300,000).
OPENMP_SPIN_COUNT = 3000


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Bound how long PyTorch's OpenMP threads spin before they sleep.

    libgomp (PyTorch's OpenMP on Linux) reads its settings once, when torch is first
    imported, so ``deeplense`` calls this before any command imports torch, and the
    setting reaches SLURM jobs and Ray workers through the environment. Each of a training
    step's hundreds of small kernels wakes the worker threads: sleeping at once is slow on an
    idle machine, libgomp's long default spin is slow beside busy processes, and a short spin
    does well in both (BENCHMARKS.md, 'OpenMP threads waiting'). A user's own
    ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins. Returns what was set.
    """
    env = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return None
    env["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    return f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"


def prepare_cpu_threads(num_threads: int | None = None) -> int:
    """Set torch's CPU threads (default: the cores this process may use). The OpenMP wait
    policy is :func:`configure_openmp`'s, set before torch was imported."""
    import torch

    n = int(num_threads) if num_threads else available_cores()
    torch.set_num_threads(max(1, n))
    return n


def resolve_device(requested: str = "auto") -> torch.device:
    import torch

    req = (requested or "auto").lower()
    if req == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if req == "cpu":
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeepLenseError(
                f"device {requested!r} requested but CUDA is not available here; "
                "use --device cpu or run on a GPU machine"
            )
        dev = torch.device(req)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeepLenseError(
                f"{requested!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    raise DeepLenseError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions on CUDA while it lasts, then the caller's setting again.

    cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa): on an H200 a
    run's predictions then differed from its exported ONNX model's by 4e-4 in probability.
    Evaluation and prediction are cheap next to training, so they pay for exact answers.
    Only the new precision API is touched: mixing it with the legacy flags is an error.
    """
    if device.type != "cuda":
        yield
        return
    import torch

    conv = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # set at import, not in stubs
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)."""

    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for training (None = full precision).

    CUDA: bf16 where the card supports it, else fp16 (with a gradient scaler). CPU: bf16
    where the CPU has native bf16 instructions (it trains faster there: BENCHMARKS.md,
    'bf16 autocast versus float32'), else full precision.
    Weights, optimiser state and checkpoints stay float32 either way.
    """
    import torch

    if amp == "off":
        return None
    if device.type == "cpu":
        if amp == "fp16":
            raise DeepLenseError(
                "--amp fp16 needs a CUDA device; on the CPU use --amp bf16 or --amp off"
            )
        if amp == "bf16" or cpu_has_fast_bf16():
            return torch.bfloat16
        return None
    if device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def amp_warning(device: torch.device, dtype: torch.dtype | None) -> str | None:
    """Why this mixed precision will be slow here (None when it will not).

    An explicit ``--amp bf16`` on a CPU without native bf16 (a config file written on another
    machine, say) makes PyTorch emulate every bf16 product, many times slower than float32
    (BENCHMARKS.md, 'bf16 autocast versus float32').
    """
    import torch

    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        return (
            "this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is emulated and "
            "training runs many times slower than in float32; use --amp auto (float32 here)"
        )
    return None


@functools.cache
def _fp32_conv_class() -> type:
    import torch
    import torch.nn as nn

    class Fp32UnderCpuAutocast(nn.Conv2d):
        """A Conv2d that leaves CPU autocast and runs in float32 (its output is float32)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_autocast_enabled("cpu"):
                with torch.autocast("cpu", enabled=False):
                    return super().forward(x.float())
            return super().forward(x)

    Fp32UnderCpuAutocast.__module__ = __name__
    return Fp32UnderCpuAutocast


def cpu_bf16_fixups(model: torch.nn.Module) -> int:
    """Run the convolutions that oneDNN is slow at in bf16 in float32 instead.

    oneDNN's bf16 kernels for strided grouped (depthwise) convolutions, such as CvT's key/value
    projections and PiT's pooling, are slower than its float32 ones (BENCHMARKS.md, 'Training
    on the CPU'). Changes the modules' class only: the weights, the state-dict keys and
    every other layer's autocast stay as they were. Returns how many convolutions were changed.
    """
    import torch.nn as nn

    fp32 = _fp32_conv_class()
    count = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and m.groups > 1 and max(m.stride) > 1:
            m.__class__ = fp32
            count += 1
    return count
