"""The CPU training fixes deeplense applies, and what each buys, measured in one run.

1. ``deeplense_cli.core.device.cpu_bf16_fixups``: strided grouped (depthwise) convolutions run in
   float32 under bf16 autocast (oneDNN's bf16 kernels for them are slow on CPUs without AMX).
2. ``deeplense_plugins._common.fast_channel_norms``: vit-pytorch's channel LayerNorm (CvT,
   CrossFormer, TwinsSVT) as one fused ``layer_norm`` instead of var/mean reductions.
3. ``deeplense_plugins._channels_last``: CrossFormer's, TwinsSVT's and CvT's transformer stages
   on (B, H, W, C) tokens with matrix products instead of 1x1 convolutions on (B, C, H, W) maps.

Part one times the kernels alone (forward + backward); part two times whole training steps
(bf16 autocast, AdamW, batch 64, 64 px) of the affected architectures with fixes 1 and 2 off
and on, alternating step by step so machine drift hits both alike (fix 3 stays on in both);
part three times steps with upstream's stages against the channels-last ones (fixes 1 and 2
on in both).

    python benchmarks/bench_cpu_kernels.py [--models cvt,pit,crossformer,twinssvt] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine
from _timing import alternating_images_per_s, optimizer

from deeplense_cli.core.device import configure_openmp

configure_openmp()  # what `deeplense train` runs under; before anything imports torch


def _time(fn, repeat: int) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def depthwise_rows(repeat: int) -> None:
    import torch

    print("| depthwise 3x3 conv, batch 64 | stride | bf16 autocast ms | float32 ms | bf16 / fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for channels, size in ((64, 16), (128, 8), (64, 32)):
        for stride in (1, 2):
            conv = torch.nn.Conv2d(
                channels, channels, 3, padding=1, stride=stride, groups=channels, bias=False
            )
            x = torch.randn(64, channels, size, size).bfloat16().requires_grad_()

            def step(bf16: bool, conv=conv, x=x) -> None:
                if bf16:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y = conv(x)
                else:
                    y = conv(x.float())
                y.float().sum().backward()

            b = _time(lambda step=step: step(True), repeat)
            f = _time(lambda step=step: step(False), repeat)
            print(f"| {channels} x {size} x {size} | {stride} | {b:.2f} | {f:.2f} | {b / f:.1f}x |")


def layer_norm_rows(repeat: int) -> None:
    import torch
    from deeplense_plugins._common import fast_channel_norms
    from vit_pytorch import cvt

    print("\n| channel LayerNorm, batch 64 | upstream ms | fused ms | speed-up |")
    print("| --- | --- | --- | --- |")
    for channels, size in ((32, 16), (64, 16), (128, 8)):
        upstream = cvt.LayerNorm(channels)
        fused = cvt.LayerNorm(channels)
        fast_channel_norms(fused, cvt)
        x = torch.randn(64, channels, size, size).bfloat16().requires_grad_()

        def step(norm, x=x) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = norm(x)
            y.float().sum().backward()

        u = _time(lambda n=upstream: step(n), repeat)
        f = _time(lambda n=fused: step(n), repeat)
        print(f"| {channels} x {size} x {size} | {u:.2f} | {f:.2f} | {u / f:.1f}x |")


def _compare_steps(
    names: list[str],
    steps: int,
    head: tuple[str, str, str],
    prepare: Callable[[Any, bool], int],
    note: Callable[[int, int], str | None],
) -> None:
    """A table of training images/s per architecture with a setting off and on, the two
    alternating step by step. ``prepare(model, on)`` applies the setting and returns a count;
    ``note(count off, count on)`` is the last column, or None to leave the model out."""
    import torch

    from deeplense_cli.registry.manager import architectures

    archs = architectures()
    print(f"\n| model | {head[0]} img/s | {head[1]} img/s | speed-up | {head[2]} |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        arch = archs[name]
        setups, counts = {}, {}
        for on in (False, True):
            torch.manual_seed(0)
            model = arch.build(image_size=64)
            counts[on] = prepare(model, on)
            setups[on] = (model, optimizer(model), True)
        text = note(counts[False], counts[True])
        if text is None:
            continue
        x, y = torch.rand(64, 1, 64, 64), torch.randint(0, 3, (64,))
        speed = alternating_images_per_s(setups, x, y, steps, warmup=2)
        off_s, on_s = speed[False], speed[True]
        print(
            f"| {arch.name} | {off_s:.0f} | {on_s:.0f} | {on_s / off_s:.2f}x | {text} |",
            flush=True,
        )


def training_rows(names: list[str], steps: int) -> None:
    """Fixes 1 and 2 off (upstream's channel norms, bf16 strided convs) and on."""
    from deeplense_plugins._common import restore_channel_norms

    from deeplense_cli.core.device import cpu_bf16_fixups

    def prepare(model: Any, on: bool) -> int:
        return cpu_bf16_fixups(model) if on else restore_channel_norms(model)

    head = ("fixes off", "fixes on", "convs / norms changed")
    _compare_steps(names, steps, head, prepare, lambda norms, convs: f"{convs} / {norms}")


def stage_rows(names: list[str], steps: int) -> None:
    """Fix 3: upstream's transformer stages against the channels-last ones (1 and 2 on)."""
    from deeplense_plugins._channels_last import upstream_stages

    from deeplense_cli.core.device import cpu_bf16_fixups

    def prepare(model: Any, on: bool) -> int:
        cpu_bf16_fixups(model)
        return 0 if on else upstream_stages(model)

    head = ("upstream stages", "channels-last", "stages")
    _compare_steps(names, steps, head, prepare, lambda stages, _: str(stages) if stages else None)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="cvt,pit,crossformer,twinssvt")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per setting")
    parser.add_argument("--repeat", type=int, default=15, help="timed kernel calls")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {machine()}; torch {torch.__version__}, {args.threads} threads\n")
    depthwise_rows(args.repeat)
    layer_norm_rows(args.repeat)
    names = [m.strip().lower() for m in args.models.split(",")]
    training_rows(names, args.steps)
    stage_rows(names, args.steps)


if __name__ == "__main__":
    main()
