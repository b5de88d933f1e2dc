"""Time to accuracy: validation accuracy against training minutes (and images seen) for runs
side by side, read from each run's metrics.jsonl, with the minutes each run took to reach a
few accuracy levels.

    python benchmarks/time_to_accuracy.py RUN [RUN ...] [--levels 0.95,0.99,0.995] [--plot F.png]

Training minutes are the sum of the epochs' `train_seconds` (validation excluded), so they
carry the load of the machine the run had; images seen (epochs x training images) do not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def curve(run: Path) -> tuple[str, list[dict[str, Any]]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    split = json.loads((run / "split.json").read_text())
    train_images = int(split["sizes"]["train"])
    minutes = images = 0.0
    points = []
    for row in rows:
        minutes += row["train_seconds"] / 60
        images += train_images
        points.append(
            {
                "epoch": row["epoch"],
                "minutes": minutes,
                "images": images,
                "accuracy": row["val_accuracy"],
                "macro_auc": row["val_macro_auc"],
                "images_per_s": row["train_images_per_s"],
            }
        )
    return run.name, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--levels", default="0.95,0.98,0.99,0.995,0.997")
    parser.add_argument("--plot", type=Path, help="Write the curves to this PNG")
    args = parser.parse_args()
    levels = [float(x) for x in args.levels.split(",")]
    curves = [curve(run) for run in args.runs]

    print("| run | " + " | ".join(f"val {lv:.1%}" for lv in levels) + " |")
    print("| --- |" + " --- |" * len(levels))
    for name, points in curves:
        cells = []
        for level in levels:
            hit = next((p for p in points if p["accuracy"] >= level), None)
            cells.append("-" if hit is None else f"{hit['minutes']:.0f} min (ep {hit['epoch']})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, points in curves:
        print(f"\n{name}: epoch, training minutes, images seen (M), val accuracy, macro AUC, img/s")
        for p in points:
            print(
                f"  {p['epoch']:3d} {p['minutes']:7.1f} {p['images'] / 1e6:6.2f} "
                f"{p['accuracy']:.4f} {p['macro_auc']:.5f} {p['images_per_s']:6.0f}"
            )
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for name, points in curves:
            ax.plot(
                [p["minutes"] for p in points], [p["accuracy"] for p in points], "o-", label=name
            )
        ax.set(xlabel="training minutes", ylabel="validation accuracy", ylim=(0.9, 1.0))
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
