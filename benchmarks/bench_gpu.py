"""GPU smoke test and throughput: PyTorch eager AMP vs ONNX Runtime CUDA vs TensorRT fp16.

Needs a CUDA machine with ``onnxruntime-gpu`` (``pip install 'deeplense[gpu]'``, never
together with ``onnxruntime``). Without CUDA it prints why and exits 0. Finishes in a few
minutes: per model it exports fp32 and fp16 files with ``deeplense_cli.deploy.export.export_onnx``,
times images/s at one batch size for

* PyTorch eager under autocast (bf16 where supported, else fp16), channels-last;
* ONNX Runtime CUDA provider, fp32 file and fp16 file, through deeplense's ``OnnxModel``
  (IO binding: input copied once per call, logits read back -- as ``predict`` does);
* ONNX Runtime TensorRT provider with fp16 kernels (fp32 file; engine build time reported);
  for models whose export uses ONNX Runtime's fused attention (CCT here), which TensorRT
  leaves to the CUDA provider, also the ``--standard-ops`` export,

then runs a few AMP training steps (AdamW, random data) as a smoke test of the GPU stack.

    python benchmarks/bench_gpu.py --models ResNet18,CCT,Swin --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cuda_timed(fn: Any, iters: int) -> float:
    """Median seconds per call (synchronised)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def eager_amp(name: str, batch: int, iters: int) -> tuple[float, str]:
    import torch
    from bench_onnx import build

    model = build(name).cuda().to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    x = torch.rand(batch, 1, 64, 64, device="cuda").to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
            model(x)

    return batch / cuda_timed(step, iters), str(dtype).replace("torch.", "")


def ort_rate(path: Path, device: str, batch: int, iters: int) -> tuple[float | None, str]:
    from deeplense_cli.core.errors import DeepLenseError
    from deeplense_cli.deploy.onnx_session import OnnxModel

    t = time.perf_counter()
    try:
        model = OnnxModel(path, device=device)
        x = np.random.default_rng(0).random((batch, 1, 64, 64), dtype=np.float32)
        model.logits(x)  # TensorRT builds its engine here
    except DeepLenseError as exc:
        return None, str(exc)[:100]
    setup = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        model.logits(x)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times), f"{model.providers[0]}, set-up {setup:.0f} s"


def train_steps(name: str, batch: int, steps: int) -> str:
    import torch
    from bench_onnx import build

    model = build(name).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.rand(batch, 1, 64, 64, device="cuda")
    y = torch.randint(0, 3, (batch,), device="cuda")
    losses = []
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - t)
    ok = all(np.isfinite(losses))
    return f"{name}: {steps} AMP steps, {rate:.0f} img/s, loss {losses[0]:.3f} -> {losses[-1]:.3f}, finite: {ok}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ResNet18,CCT,Swin")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=20)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("No CUDA device here: bench_gpu.py skipped (run it on a GPU machine).")
        return
    import onnxruntime as ort
    from bench_onnx import machine
    from bench_predict import make_run

    from deeplense_cli.deploy.export import export_onnx

    print(f"GPU: {torch.cuda.get_device_name(0)}; {machine()}")
    print(f"ORT providers: {', '.join(ort.get_available_providers())}")
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            run = make_run(Path(tmp) / name, name)
            exported = export_onnx(run, validation_images=8)
            fp32 = exported.path
            fp16 = export_onnx(run, precision="fp16", validation_images=8).path
            eager, amp = eager_amp(name, args.batch, args.iters)
            cuda32, n1 = ort_rate(fp32, "cuda", args.batch, args.iters)
            cuda16, n2 = ort_rate(fp16, "cuda", args.batch, args.iters)
            trt, n3 = ort_rate(fp32, "tensorrt", args.batch, args.iters)
            trt_std, n4 = trt, n3
            if exported.contrib_ops:  # TensorRT cannot run ORT's fused attention itself
                std = Path(tmp) / f"{name}-standard-ops.onnx"
                export_onnx(run, output=std, standard_ops=True, validation_images=8)
                trt_std, n4 = ort_rate(std, "tensorrt", args.batch, args.iters)
            rows.append((name, eager, amp, cuda32, cuda16, trt, trt_std))
            notes += [f"{name} CUDA fp32: {n1}", f"{name} CUDA fp16: {n2}", f"{name} TRT: {n3}"]
            notes += [f"{name} TRT, --standard-ops export: {n4}"] if exported.contrib_ops else []
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}"

    print(f"\nImages/s at batch {args.batch}, 64x64 one channel:\n")
    print(
        "| model | eager AMP | ORT CUDA fp32 | ORT CUDA fp16 | ORT TensorRT fp16 "
        "| TensorRT, standard ops | TRT/eager |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, eager, amp, c32, c16, trt, trt_std in rows:
        best = max((v for v in (trt, trt_std) if v), default=None)
        ratio = f"{best / eager:.1f}x" if best else "n/a"
        print(
            f"| {name} | {eager:.0f} ({amp}) | {fmt(c32)} | {fmt(c16)} | {fmt(trt)} "
            f"| {fmt(trt_std)} | {ratio} |"
        )
    print("\n" + "\n".join(notes))
    print("\nTraining smoke test:")
    for name in args.models.split(","):
        print("  " + train_steps(name, min(args.batch, 128), args.train_steps))


if __name__ == "__main__":
    main()
