"""BatchNorm statistics and numeric precision: a trained run's validation accuracy in float32
(what evaluate, export and predict run) and under bf16 autocast, with the BatchNorm running
statistics gathered in either precision.

    python benchmarks/bn_precision.py RUN [--checkpoint best] [--images 1024]

Rows, each on the run's whole validation split:
- the checkpoint as saved, in float32 and under bf16 autocast (with and without the float32
  strided depthwise convolutions training uses on the CPU, `cpu_bf16_fixups`);
- the statistics gathered again in float32 and in bf16 from ``--images`` training images by
  training's own precise-BatchNorm pass (`Trainer.precise_batch_norm`), each scored both ways.

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
from deeplense_cli.evaluation.inference import predict_logits
from deeplense_cli.evaluation.metrics import mean_log_loss, softmax
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training.loop import Trainer


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


def trainer_with(run: RunDir, config: dict[str, Any], splits: Any, checkpoint: str) -> Trainer:
    """A Trainer whose evaluated model holds ``checkpoint``'s weights: its
    `precise_batch_norm` is training's own pass (the same images, batches and inputs)."""
    trainer = Trainer(config, run, splits)
    model = trainer.eval_model()
    model.load_state_dict(run.load_checkpoint(checkpoint)["model"])
    cpu_bf16_fixups(model)  # float32 strided depthwise convolutions, as bf16 training has
    return trainer


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

    model = run.build_model(args.checkpoint)
    print(f"| saved | bf16, no fix-ups | {score(model, splits, transform, True)} |")
    cpu_bf16_fixups(model)
    print(f"| saved | float32 | {score(model, splits, transform, False)} |")
    print(f"| saved | bf16 | {score(model, splits, transform, True)} |")
    config["train"] |= {"precise_bn_images": args.images, "device": "cpu"}  # as score runs
    for gathered_bf16 in (False, True):
        trainer = trainer_with(run, config, splits, args.checkpoint)
        with precision(gathered_bf16):  # training's pass runs in float32 unless autocast is on
            trainer.precise_batch_norm()
        what = "bf16" if gathered_bf16 else "float32"
        for bf16 in (False, True):
            scored = "bf16" if bf16 else "float32"
            line = score(trainer.eval_model(), splits, transform, bf16)
            print(f"| gathered in {what} ({args.images} images) | {scored} | {line} |")


if __name__ == "__main__":
    main()
