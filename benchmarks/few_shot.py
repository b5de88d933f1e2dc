"""Few-shot curves: fine-tuning a shipped model on a few labelled images of a shifted kind,
against the same architecture trained from scratch on the same images, epochs and seed.

    python benchmarks/few_shot.py --model Model_III --variant lens_light \
        --suite SHIFT_DIR --sizes 10,50,200,1000 --epochs 10 --out DIR

Training images: the variant simulated with ``--train-seed`` (train split, built with
shift_suite.py). Test images: the suite's own folder of that variant (another seed and split),
scored with ``deeplense evaluate RUN --data``. Every run goes through the CLI, one after the
other; the table gives test accuracy and training minutes for each size and start.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _machine import machine
from shift_suite import build

from deeplense_cli.data import KNOWN_CLASSES
from deeplense_cli.registry.pretrained import shipped_models


def _subset(source: Path, out: Path, per_class: int) -> Path:
    """``per_class`` images of each class of ``source``, linked into ``out``."""
    for cls in KNOWN_CLASSES:
        files = sorted((source / cls).iterdir())[:per_class]
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            (out / cls / f.name).symlink_to(f.resolve())
    return out


def _deeplense(*args: object) -> str:
    cmd = [sys.executable, "-m", "deeplense_cli", *[str(a) for a in args]]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="Model_III", help="a shipped model")
    parser.add_argument("--variant", default="lens_light")
    parser.add_argument("--suite", type=Path, required=True, help="a shift_suite.py build")
    parser.add_argument("--sizes", default="10,50,200,1000")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-seed", type=int, default=5)
    parser.add_argument("--scratch-lr", type=float, default=5e-4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    shipped = shipped_models()[args.model.lower()]
    crop = (shipped.card["config"]["data"] or {}).get("crop")
    print(f"machine: {machine()}", flush=True)
    pool = args.out / "train_pool"
    if not (pool / args.variant).is_dir():
        build(
            shipped.card["dataset"], max(sizes), args.train_seed, pool, split="train",
            only=[args.variant], workers=1,
        )  # fmt: skip
    test = args.suite / args.variant
    rows: list[dict[str, Any]] = []
    for size in sizes:
        data = _subset(pool / args.variant, args.out / f"data_{size}", size)
        starts = {
            f"from {shipped.name}": ["--init", shipped.name],
            "from scratch": ["-m", shipped.card["architecture"], "--lr", args.scratch_lr]
            + (["--set", f"data.crop={crop}"] if crop else []),
        }
        for start, flags in starts.items():
            run = args.out / f"run_{size}_{start.split()[-1]}"
            began = time.perf_counter()
            _deeplense(
                "train", *flags, "--data", data, "--epochs", args.epochs, "--seed", 0,
                "--batch-size", 32, "--val-fraction", 0.1, "--run-dir", run,
                "--output", "quiet", "--no-evaluate",
            )  # fmt: skip
            minutes = (time.perf_counter() - began) / 60
            metrics = json.loads(_deeplense("evaluate", run, "--data", test, "--json"))
            row = {
                "per_class": size,
                "start": start,
                "test_accuracy": metrics["accuracy"],
                "minutes": minutes,
                "test_images": metrics["n"],
            }
            rows.append(row)
            print(
                f"{size:5d}/class  {start:18s}  test {row['test_accuracy']:.2%} "
                f"({row['test_images']} images)  {minutes:.1f} min",
                flush=True,
            )
    (args.out / "few_shot.json").write_text(
        json.dumps(
            {
                "model": shipped.name,
                "variant": args.variant,
                "epochs": args.epochs,
                "machine": machine(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
