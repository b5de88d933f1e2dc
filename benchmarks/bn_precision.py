"""BatchNorm statistics and numeric precision: a trained run's validation accuracy in float32
(what evaluate, export and predict run) and under bf16 autocast, with the BatchNorm running
statistics gathered in either precision.

    python benchmarks/bn_precision.py RUN [--checkpoint best] [--images 1024]

Rows, each on the run's whole validation split:
- the checkpoint as saved, in float32 and under bf16 autocast (with and without the float32
  strided depthwise convolutions training uses on the CPU, `cpu_bf16_fixups`);
- the statistics gathered again in float32 and in bf16 from ``--images`` training images,
  drawn and batched as training's precise-BatchNorm pass does, each scored both ways.

A run trained before float32 validation (6344208) saved statistics gathered under autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine

from deeplense_cli.core.device import cpu_bf16_fixups
from deeplense_cli.data.splits import load_splits
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.evaluation.inference import predict_logits
from deeplense_cli.evaluation.metrics import mean_log_loss, softmax
from deeplense_cli.runs.rundir import RunDir


@contextlib.contextmanager
def precision(bf16: bool) -> Iterator[None]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        yield


def score(model: torch.nn.Module, splits: Any, transform: dict[str, Any], bf16: bool) -> str:
    idx = splits.val_idx
    labels = splits.train.labels[idx]
    start = time.perf_counter()
    with precision(bf16):
        logits = predict_logits(model, splits.train.images, transform, indices=idx)
    probs = softmax(logits.astype(np.float64))
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    loss = mean_log_loss(probs, labels)
    return f"{accuracy:.2%} | {loss:.4f} | {time.perf_counter() - start:.1f}"


def gather_statistics(
    model: torch.nn.Module, splits: Any, transform: dict[str, Any], config: dict[str, Any], n: int
) -> None:
    """Training's precise-BatchNorm pass (`Trainer.precise_batch_norm`), in the caller's
    precision: the same images, in the same batches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    rng = np.random.default_rng([int(config["train"]["seed"]), 7])
    idx = rng.choice(splits.train_idx, size=min(n, len(splits.train_idx)), replace=False)
    batch = int(config["train"]["batch_size"])
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            raw = np.asarray(splits.train.images[np.sort(idx[start : start + batch])])
            model(torch.from_numpy(apply_transform(raw, transform)))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--images", type=int, default=1024)
    args = parser.parse_args()
    print(machine(), f"torch {torch.__version__}")
    run = RunDir.open(args.run)
    config = run.read_config()
    splits = load_splits(config)
    transform = run.transform
    print(f"{run.path}, {args.checkpoint} checkpoint, {len(splits.val_idx)} validation images\n")
    print("| BatchNorm statistics | scored in | accuracy | loss | seconds |")
    print("| --- | --- | ---: | ---: | ---: |")

    def fresh() -> torch.nn.Module:
        model = run.build_model(args.checkpoint)
        cpu_bf16_fixups(model)  # float32 strided depthwise convolutions, as training has
        return model

    model = run.build_model(args.checkpoint)
    print(f"| saved | bf16, no fix-ups | {score(model, splits, transform, True)} |")
    model = fresh()
    print(f"| saved | float32 | {score(model, splits, transform, False)} |")
    print(f"| saved | bf16 | {score(model, splits, transform, True)} |")
    for gathered_bf16 in (False, True):
        model = fresh()
        with precision(gathered_bf16):
            gather_statistics(model, splits, transform, config, args.images)
        what = "bf16" if gathered_bf16 else "float32"
        for bf16 in (False, True):
            scored = "bf16" if bf16 else "float32"
            line = score(model, splits, transform, bf16)
            print(f"| gathered in {what} ({args.images} images) | {scored} | {line} |")


if __name__ == "__main__":
    main()
