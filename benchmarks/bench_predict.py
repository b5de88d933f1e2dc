"""End-to-end ``deeplense predict`` over a folder of .npy files vs the raw model throughput.

Raw: ``session.run`` on batches already in memory (the same ONNX Runtime session
deeplense builds). End to end: ``deeplense_cli.deploy.predict.predict`` -- finding the files,
reading and checking each .npy, the transform, inference, softmax and writing the CSV --
and the ``deeplense predict`` command in a fresh process (start-up and model loading
included). Goal: end to end >= 80% of raw. Raw and predict() alternate for ``--rounds`` rounds
(medians reported).

    OMP_NUM_THREADS=2 python benchmarks/bench_predict.py --files 2048 --models ResNet18,CCT
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_onnx import machine  # noqa: E402


def make_run(path: Path, model: str) -> Path:
    import torch

    from deeplense_cli.data.transforms import default_transform
    from deeplense_cli.registry.manager import get_architecture
    from deeplense_cli.runs.rundir import RunDir

    torch.manual_seed(0)
    arch = get_architecture(model)
    run = RunDir(path)
    path.mkdir(parents=True)
    run.write_config({"model": {"name": arch.name, "params": {}}, "data": {"dataset": None}})
    run.write_record("classes", ["axion", "cdm", "no_sub"])
    run.write_record("transform", default_transform(64))
    net = arch.build(image_size=64, num_classes=3, in_channels=1)
    run.save_checkpoint("best", {"model": net.state_dict(), "epoch": 0})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2048)
    ap.add_argument("--models", default="ResNet18,CCT")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()

    from deeplense_cli.data.transforms import apply_transform
    from deeplense_cli.deploy.export import export_onnx
    from deeplense_cli.deploy.onnx_session import OnnxModel
    from deeplense_cli.deploy.predict import predict

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        rng = np.random.default_rng(0)
        for i in range(args.files):
            sub = folder / f"part{i % 4}"
            sub.mkdir(parents=True, exist_ok=True)
            np.save(sub / f"img{i:06d}.npy", rng.random((64, 64), dtype=np.float32))
        raw_images = apply_transform(
            rng.random((args.files, 64, 64), dtype=np.float32),
            {"image_size": 64, "in_channels": 1, "normalize": "minmax"},
        )
        for name in args.models.split(","):
            run = make_run(Path(tmp) / name, name)
            for precision in args.precisions.split(","):
                path = export_onnx(run, precision=precision, validation_images=8).path
                model = OnnxModel(path, device="cpu", threads=args.threads)
                bs = args.batch_size
                model.logits(raw_images[:bs])  # warm-up
                out = Path(tmp) / "p.csv"
                raws, e2es = [], []
                for _ in range(args.rounds):  # alternate, so load changes hit both
                    t = time.perf_counter()
                    for i in range(0, args.files, bs):
                        model.logits(raw_images[i : i + bs])
                    raws.append(args.files / (time.perf_counter() - t))
                    summary = predict(
                        path, [folder], output=out, batch_size=bs, threads=args.threads
                    )
                    e2es.append(summary.images_per_second)
                raw, e2e = statistics.median(raws), statistics.median(e2es)
                t = time.perf_counter()
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "deeplense_cli",
                        "predict",
                        str(path),
                        str(folder),
                        "-o",
                        str(out),
                        "--batch-size",
                        str(bs),
                        "--threads",
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                )
                cli_s = time.perf_counter() - t
                assert proc.returncode == 0, proc.stderr
                rows.append((name, precision, raw, e2e, args.files / cli_s, cli_s))
                print(
                    f"  {name} {precision}: raw {raw:.0f} img/s, predict {e2e:.0f} img/s, "
                    f"CLI {cli_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"Machine: {machine()}; {args.threads} threads; {args.files} files of 64x64 float32 "
        f".npy, batch {args.batch_size}.\n"
    )
    print(
        "| model | precision | raw ORT img/s | predict() img/s | predict/raw | "
        "CLI process img/s (incl. start-up) | CLI wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, precision, raw, e2e, cli_rate, cli_s in rows:
        print(
            f"| {name} | {precision} | {raw:.0f} | {e2e:.0f} | {e2e / raw:.0%} | "
            f"{cli_rate:.0f} | {cli_s:.1f} |"
        )


if __name__ == "__main__":
    main()
