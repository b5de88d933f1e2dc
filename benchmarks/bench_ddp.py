"""Distributed training (DDP): how training speed scales with processes, and what the DDP
path costs on one device.

Scaling: the real ``deeplense train --nproc-per-node N`` on a simulated Model_III set, for
each N in ``--procs``, the same global batch and epochs; training images/s as the trainer
reports it (all ranks' images over the epoch's training time), the median of the epochs
after the first (the first pays one-off costs). N = 1 is plain single-process training.

    python benchmarks/bench_ddp.py scaling [--procs 1,2] [--models pit,resnet18] [--epochs 3]

Overhead: one process, one device (the GPU when there is one): the training step of
``deeplense train`` on the bare model against the same model in DistributedDataParallel
(a process group of one: the gradient buckets, hooks and all-reduce calls, no peer), the
two alternating step by step so drift hits both alike.

    python benchmarks/bench_ddp.py overhead [--models resnet18,cvt] [--batch 256] [--steps 30]

Prints a Markdown table for BENCHMARKS.md ('Distributed training (DDP)') with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine


def scaling(args: argparse.Namespace) -> None:
    from deeplense_cli.simulate import simulate_dataset

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-ddp-"))
    data = work / "data"
    if not (data / "Model_III").exists():
        simulate_dataset(
            "Model_III", data, train_per_class=args.per_class, test_per_class=8, seed=1
        )
    env = {**os.environ, "DEEPLENSE_HOME": str(work / "home")}
    print(f"Machine: {machine()}; {3 * args.per_class} training images, batch {args.batch}")
    print("\n| model | processes | images/s (median of epochs 2+) | vs 1 process "
          "| last val loss | last val accuracy |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for model in args.models.split(","):
        base = None
        for n in [int(p) for p in args.procs.split(",")]:
            run = work / f"{model}-{n}-{time.time_ns()}"
            cmd = [sys.executable, "-m", "deeplense_cli", "train", "-m", model,
                   "--dataset", "Model_III", "--data-root", str(data), "--run-dir", str(run),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                   "--output", "jsonl", "--no-evaluate"]  # fmt: skip
            if n > 1:
                cmd += ["--nproc-per-node", str(n)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                print(f"| {model} | {n} | failed: {proc.stderr.strip().splitlines()[-1]} | |")
                continue
            rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
            epochs = [r for r in rows if r.get("event") == "epoch"]
            speeds = [r["train_images_per_s"] for r in epochs]
            speed = statistics.median(speeds[1:] or speeds)
            base = base or speed
            last = epochs[-1]
            print(
                f"| {model} | {n} | {speed:.1f} | {speed / base:.2f}x "
                f"| {last['val_loss']:.4f} | {last['val_accuracy']:.4f} |",
                flush=True,
            )


def overhead(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from deeplense_cli.core.device import autocast_dtype, resolve_device
    from deeplense_cli.registry.manager import get_architecture
    from deeplense_cli.training.optim import make_optimizer

    device = resolve_device(args.device)
    amp = autocast_dtype(device, "auto")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29400 + os.getpid() % 1000))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    print(f"Machine: {machine()}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", amp {amp}, batch {args.batch}")  # fmt: skip
    print("\n| model | plain images/s | DDP (1 process) images/s | DDP overhead |")
    print("|---|---:|---:|---:|")
    x = torch.randn(args.batch, 1, 64, 64, device=device)
    y = torch.randint(0, 3, (args.batch,), device=device)
    for name in args.models.split(","):
        arch = get_architecture(name)
        setups = {}
        for kind in ("plain", "ddp"):
            torch.manual_seed(0)
            model = arch.build(image_size=64, num_classes=3, in_channels=1).to(device)
            opt = make_optimizer(model, 0.05, 1e-4, device)
            net = model
            if kind == "ddp":
                ids = [device.index or 0] if device.type == "cuda" else None
                net = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=ids, gradient_as_bucket_view=True
                )
            setups[kind] = (net, model, opt)
        times: dict[str, list[float]] = {k: [] for k in setups}
        for rnd in range(2 * (args.steps + 3)):
            kind = ("plain", "ddp")[rnd % 2]
            net, model, opt = setups[kind]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rnd >= 6:  # three untimed steps each
                times[kind].append(time.perf_counter() - start)
        plain, ddp = (args.batch / statistics.median(times[k]) for k in ("plain", "ddp"))
        print(f"| {arch.name} | {plain:.0f} | {ddp:.0f} | {100 * (plain / ddp - 1):+.1f}% |")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--procs", default="1,2")
    s.add_argument("--models", default="pit,resnet18")
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--per-class", type=int, default=256)
    s.add_argument("--work", help="folder for the data and runs (default: a new temp folder)")
    o = sub.add_parser("overhead")
    o.add_argument("--models", default="resnet18,cvt,pit")
    o.add_argument("--batch", type=int, default=256)
    o.add_argument("--steps", type=int, default=30)
    o.add_argument("--device", default="auto")
    args = parser.parse_args()
    scaling(args) if args.what == "scaling" else overhead(args)


if __name__ == "__main__":
    main()
