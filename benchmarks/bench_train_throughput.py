"""Training throughput per architecture: native resolution (64 px) versus the reference
project's practice of upsampling every image to 224 px first. Both measured side by side,
in one run, on the same machine, alternating step by step, each the step ``deeplense train``
takes (bf16 autocast on CPUs with native bf16; ``--float32`` to force float32).

    python benchmarks/bench_train_throughput.py [--models cct,resnet18] [--steps 6] [--batch 32]

``--amp`` instead compares float32 with bf16 autocast (what ``deeplense train`` uses on
CPUs with native bf16) at 64 px, the two timed in alternating rounds.

``--optimizer`` compares torch's default AdamW with the fused one ``deeplense train`` builds
(bf16 steps with gradient clipping, alternating).

``--crops 150,100`` compares centre crops of larger images (Model_I's 150 px: ``--source
150``): each model built for the crop it sees, fed the same raw batch, the crop alternating
step by step; what ``data.crop`` buys in training speed.

``--channels-last`` compares contiguous with channels-last memory for the same step.

``--openmp`` times the same training steps in child processes under three OpenMP wait
policies (threads sleep at once, deeplense's short spin, libgomp's default long spin), on
an idle machine and with ``--loads`` busy processes competing for the cores, the policies
alternating within each load level:

    python benchmarks/bench_train_throughput.py --openmp --models levit,cait,resnet18 --loads 0,2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine
from _timing import alternating_images_per_s, optimizer

from deeplense_cli.core.device import OPENMP_SPIN_COUNT, configure_openmp

configure_openmp()  # what `deeplense train` runs under; before anything imports torch

#: name -> environment of the child processes of --openmp
OPENMP_POLICIES = {
    "sleep at once (OMP_WAIT_POLICY=PASSIVE)": {"OMP_WAIT_POLICY": "PASSIVE"},
    f"deeplense (GOMP_SPINCOUNT={OPENMP_SPIN_COUNT})": {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)},
    "libgomp default (spin 300000)": {},
}


def resolution_rows(archs, names: list[str], batch: int, steps: int, bf16: bool) -> None:
    """Native 64 px against the same architecture built for 224 px and fed the 64 px batch
    upsampled (bilinear) inside the step, as the reference project did: the step
    ``deeplense train`` takes (bf16 autocast where the CPU has it, the bf16 convolution
    fix-ups, gradient clipping, fused AdamW), the two alternating step by step."""
    import torch
    import torch.nn as nn

    from deeplense_cli.core.device import cpu_bf16_fixups

    print(
        f"Training steps in {'bf16 autocast' if bf16 else 'float32'}, batch {batch}, "
        f"median of {steps} steps each, native and 224 px alternating\n"
    )
    print("| model | native 64 px img/s | upsampled to 224 img/s | speed-up of native |")
    print("| --- | --- | --- | --- |")
    for name in names:
        arch = archs[name]
        torch.manual_seed(0)
        native = arch.build(image_size=64)
        try:
            torch.manual_seed(0)
            big = arch.factory(image_size=224, num_classes=3, in_channels=1, **dict(arch.defaults))
        except Exception as exc:  # some configurations cannot take 224 px as is
            print(f"| {arch.name} | - | n/a ({type(exc).__name__}) | - |", flush=True)
            continue
        up = nn.Sequential(nn.Upsample(size=224, mode="bilinear"), big)
        setups = {}
        for key, model in (("native", native), ("224", up)):
            cpu_bf16_fixups(model)
            model.train()
            setups[key] = (model, optimizer(model), bf16)
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        speed = alternating_images_per_s(setups, x, y, steps, warmup=1)
        print(
            f"| {arch.name} | {speed['native']:.1f} | {speed['224']:.1f} | "
            f"{speed['native'] / speed['224']:.1f}x |",
            flush=True,
        )


def crop_rows(
    archs, names: list[str], batch: int, steps: int, bf16: bool, source: int, crops: list[int]
) -> None:
    """The same architecture built for each centre crop of ``source`` px images, each fed
    the crop of one raw batch (the crop is inside the timed step, as cheap as a view)."""
    import torch
    import torch.nn as nn

    from deeplense_cli.core.device import cpu_bf16_fixups

    class CentreCrop(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.size = size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top = (x.shape[-1] - self.size) // 2
            return x[..., top : top + self.size, top : top + self.size]

    print(
        f"Training steps in {'bf16 autocast' if bf16 else 'float32'}, batch {batch}, "
        f"{source} px images, median of {steps} steps each, crops alternating\n"
    )
    print(
        "| model | " + " | ".join(f"{c} px img/s" for c in crops) + " | speed-up of the smallest |"
    )
    print("| --- | " + " | ".join("---" for _ in crops) + " | --- |")
    for name in names:
        setups = {}
        for crop in crops:
            torch.manual_seed(0)
            try:
                net = archs[name].build(image_size=crop)
            except Exception as exc:  # an architecture built for fixed sizes only
                print(f"| {archs[name].name} | {crop} px: n/a ({exc}) |", flush=True)
                break
            model = nn.Sequential(CentreCrop(crop), net)
            cpu_bf16_fixups(model)
            model.train()
            setups[crop] = (model, optimizer(model), bf16)
        else:
            x, y = torch.rand(batch, 1, source, source), torch.randint(0, 3, (batch,))
            speed = alternating_images_per_s(setups, x, y, steps, warmup=1)
            cells = " | ".join(f"{speed[c]:.1f}" for c in crops)
            ratio = speed[min(crops)] / speed[max(crops)]
            print(f"| {archs[name].name} | {cells} | {ratio:.2f}x |", flush=True)


def amp_rows(archs, names: list[str], batch: int, steps: int) -> None:
    import torch

    print("| model | float32 img/s | bf16 autocast img/s | bf16 / float32 |")
    print("| --- | --- | --- | --- |")
    for name in names:
        torch.manual_seed(0)
        model = archs[name].build(image_size=64)
        opt = optimizer(model)
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        speed = alternating_images_per_s(
            {False: (model, opt, False), True: (model, opt, True)}, x, y, steps, warmup=1
        )
        f32, b16 = speed[False], speed[True]
        print(f"| {archs[name].name} | {f32:.0f} | {b16:.0f} | {b16 / f32:.2f}x |", flush=True)


def _bf16_model(archs, name: str):
    import torch

    from deeplense_cli.core.device import cpu_bf16_fixups

    torch.manual_seed(0)
    model = archs[name].build(image_size=64)
    cpu_bf16_fixups(model)
    return model


def optimizer_rows(archs, names: list[str], batch: int, steps: int) -> None:
    import torch

    print(
        "| model | parameter tensors | default AdamW img/s | fused AdamW img/s | fused / default |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        setups = {}
        for fused in (False, True):
            model = _bf16_model(archs, name)
            setups[fused] = (model, optimizer(model, fused=fused), True)
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        speed = alternating_images_per_s(setups, x, y, steps, warmup=2)
        tensors = sum(1 for _ in setups[True][0].parameters())
        print(
            f"| {archs[name].name} | {tensors} | {speed[False]:.0f} | {speed[True]:.0f} | "
            f"{speed[True] / speed[False]:.2f}x |",
            flush=True,
        )


def channels_last_rows(archs, names: list[str], batch: int, steps: int) -> None:
    """Contiguous against channels-last weights and activations, the step ``deeplense
    train`` takes on this CPU (bf16 autocast where the CPU has native bf16, else float32),
    the two alternating step by step. A one-channel batch has the same memory either way."""
    import torch

    from deeplense_cli.core.device import cpu_has_fast_bf16

    bf16 = cpu_has_fast_bf16()
    print(f"Training steps in {'bf16 autocast' if bf16 else 'float32'}, batch {batch}\n")
    print("| model | Conv2d / Linear layers | contiguous img/s | channels-last img/s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        setups = {}
        for channels_last in (False, True):
            model = _bf16_model(archs, name) if bf16 else archs[name].build(image_size=64)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            setups[channels_last] = (model.train(), optimizer(model), bf16)
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in setups[True][0].modules())
        linears = sum(isinstance(m, torch.nn.Linear) for m in setups[True][0].modules())
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        speed = alternating_images_per_s(setups, x, y, steps, warmup=2)
        print(
            f"| {archs[name].name} | {convs} / {linears} | {speed[False]:.0f} | {speed[True]:.0f} "
            f"| {speed[True] / speed[False]:.2f}x |",
            flush=True,
        )


def openmp_child(archs, names: list[str], batch: int, steps: int) -> None:
    """Print one JSON line: model -> bf16 training images/s (median of ``steps``)."""
    import json

    import torch

    out = {}
    for name in names:
        model = _bf16_model(archs, name)
        x, y = torch.rand(batch, 1, 64, 64), torch.randint(0, 3, (batch,))
        setup = {name: (model, optimizer(model), True)}
        out[name] = alternating_images_per_s(setup, x, y, steps, warmup=2)[name]
    print(json.dumps(out), flush=True)


def openmp_rows(archs, names: list[str], args) -> None:
    import json
    import statistics
    import subprocess

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    child = [sys.executable, __file__, "--openmp-child", "--models", ",".join(names)]
    child += [
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    loads = [int(v) for v in args.loads.split(",")]
    print(
        "| busy processes | OpenMP wait policy | " + " | ".join(archs[n].name for n in names) + " |"
    )
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    for load in loads:
        burners = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)
        ]
        try:
            results: dict[str, list[dict[str, float]]] = {p: [] for p in OPENMP_POLICIES}
            for _ in range(args.rounds):
                for policy, env in OPENMP_POLICIES.items():
                    done = subprocess.run(
                        child, env={**base, **env}, capture_output=True, text=True, check=True
                    )
                    results[policy].append(json.loads(done.stdout.strip().splitlines()[-1]))
        finally:
            for b in burners:
                b.kill()
                b.wait()
        for policy, runs in results.items():
            cells = [f"{statistics.median(r[n] for r in runs):.0f}" for n in names]
            print(f"| {load} | {policy} | " + " | ".join(cells) + " |", flush=True)
    print(
        f"\nimages/s per bf16 training step, batch {args.batch}; median over {args.rounds} "
        f"child processes of the median of {args.steps} steps each"
    )


def main() -> None:
    import torch

    from deeplense_cli.registry.manager import architectures

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="all")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--amp", action="store_true", help="float32 vs bf16 autocast instead")
    parser.add_argument(
        "--float32", action="store_true", help="native vs 224 px in float32 (default: bf16)"
    )
    parser.add_argument("--optimizer", action="store_true", help="default vs fused AdamW")
    parser.add_argument(
        "--channels-last", action="store_true", help="contiguous vs channels-last memory"
    )
    parser.add_argument("--crops", help="centre crops to compare, e.g. 150,100 (pixels)")
    parser.add_argument("--source", type=int, default=150, help="--crops: raw image size")
    parser.add_argument("--openmp", action="store_true", help="OpenMP wait policies, under load")
    parser.add_argument("--loads", default="0,2", help="--openmp: busy processes per level")
    parser.add_argument("--rounds", type=int, default=3, help="--openmp: children per policy")
    parser.add_argument("--openmp-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archs = architectures()
    names = list(archs) if args.models == "all" else [m.lower() for m in args.models.split(",")]
    if args.openmp_child:
        openmp_child(archs, names, args.batch, args.steps)
        return
    print(
        f"Machine: {machine()}; torch {torch.__version__}, {args.threads} threads, "
        f"batch {args.batch}, {args.steps} timed steps\n"
    )
    if args.amp:
        amp_rows(archs, names, args.batch, args.steps)
        return
    if args.optimizer:
        optimizer_rows(archs, names, args.batch, args.steps)
        return
    if args.channels_last:
        channels_last_rows(archs, names, args.batch, args.steps)
        return
    if args.crops:
        from deeplense_cli.core.device import cpu_has_fast_bf16

        crops = [int(c) for c in args.crops.split(",")]
        bf16 = cpu_has_fast_bf16() and not args.float32
        crop_rows(archs, names, args.batch, args.steps, bf16, args.source, crops)
        return
    if args.openmp:
        openmp_rows(archs, names, args)
        return
    from deeplense_cli.core.device import cpu_has_fast_bf16

    resolution_rows(archs, names, args.batch, args.steps, cpu_has_fast_bf16() and not args.float32)


if __name__ == "__main__":
    main()
