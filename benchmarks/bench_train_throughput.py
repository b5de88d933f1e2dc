"""Training throughput per architecture: native resolution (64 px) versus the reference
project's practice of upsampling every image to 224 px first. Both measured side by side,
in one run, on the same machine.

    python benchmarks/bench_train_throughput.py [--models cct,resnet18] [--steps 6] [--batch 32]

``--amp`` instead compares float32 with bf16 autocast (what ``deeplense train`` uses on
CPUs with native bf16) at 64 px, the two timed in alternating rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _machine import machine
from _timing import alternating_images_per_s


def images_per_s(model, size: int, upsample_to: int | None, batch: int, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 3, (batch,))
    model.train()

    def step() -> None:
        inp = F.interpolate(x, size=upsample_to, mode="bilinear") if upsample_to else x
        loss = F.cross_entropy(model(inp), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def amp_rows(archs, names: list[str], batch: int, steps: int) -> None:
    import torch

    print("| model | float32 img/s | bf16 autocast img/s | bf16 / float32 |")
    print("| --- | --- | --- | --- |")
    for name in names:
        torch.manual_seed(0)
        model = archs[name].build(image_size=64)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        speed = alternating_images_per_s(
            {False: (model, opt, False), True: (model, opt, True)}, x, y, steps, warmup=1
        )
        f32, b16 = speed[False], speed[True]
        print(f"| {archs[name].name} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}x |", flush=True)


def main() -> None:
    import torch

    from deeplense_cli.plugins import architectures

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="all")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--amp", action="store_true", help="float32 vs bf16 autocast instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archs = architectures()
    names = list(archs) if args.models == "all" else [m.lower() for m in args.models.split(",")]
    print(
        f"Machine: {machine()}; torch {torch.__version__}, {args.threads} threads, "
        f"batch {args.batch}, {args.steps} timed steps\n"
    )
    if args.amp:
        amp_rows(archs, names, args.batch, args.steps)
        return
    print("| model | native 64 px img/s | upsampled to 224 img/s | speed-up of native |")
    print("| --- | --- | --- | --- |")
    for name in names:
        arch = archs[name]
        torch.manual_seed(0)
        native = images_per_s(arch.build(image_size=64), 64, None, args.batch, args.steps)
        try:
            torch.manual_seed(0)
            big = arch.factory(image_size=224, num_classes=3, in_channels=1, **dict(arch.defaults))
            up = images_per_s(big, 64, 224, args.batch, max(1, args.steps // 2))
            up_s, ratio = f"{up:.1f}", f"{native / up:.1f}x"
        except Exception as exc:  # some configurations cannot take 224 px as is
            up_s, ratio = f"n/a ({type(exc).__name__})", "-"
        print(f"| {arch.name} | {native:.1f} | {up_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
