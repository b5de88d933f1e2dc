"""Time to accuracy: accuracy against training minutes (and images seen) for runs side by
side, read from each run's metrics.jsonl, with the minutes each run took to reach a few
accuracy levels and each run's accuracy at a few fixed minutes. Axion-mass regressors
(``train --task axion-mass``) are read the same way by their MAE in dex (lower is better;
levels such as ``--levels 0.1,0.07,0.05``).

    python benchmarks/time_to_accuracy.py RUN [RUN ...] [--levels 0.95,0.99,0.995]
        [--minutes 5,10,20,30] [--split auto|val|test] [--plot F.png]

`--split test` reads the test figures that runs trained with `--set train.test_curve=true`
record after every epoch; `auto` (the default) takes them when every run has them, the
validation figures otherwise.

Training minutes are the sum of the epochs' `train_seconds` (validation and test scoring
excluded), so they carry the load of the machine the run had; images seen (epochs x training
images) do not.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def curve(
    run: Path, rows: list[dict[str, Any]], split: str, score: str
) -> tuple[str, list[dict[str, Any]]]:
    info = json.loads((run / "split.json").read_text())
    train_images = int(info["sizes"]["train"])
    second = "r2" if score == "mae" else "macro_auc"  # the figure shown beside the score
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
                "score": row[f"{split}_{score}"],
                "second": row[f"{split}_{second}"],
                "images_per_s": row["train_images_per_s"],
            }
        )
    return run.name, points


def table(
    curves: list[tuple[str, list[dict[str, Any]]]],
    headers: list[str],
    columns: list[float],
    cell: Callable[[list[dict[str, Any]], float], str],
) -> None:
    print("| run | " + " | ".join(headers) + " |")
    print("| --- |" + " --- |" * len(headers))
    for name, points in curves:
        print(f"| {name} | " + " | ".join(cell(points, c) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--levels", default="0.95,0.98,0.99,0.995,0.997")
    parser.add_argument("--minutes", default="5,10,15,20,25,30", help="fixed-minute columns")
    parser.add_argument("--split", choices=("auto", "val", "test"), default="auto")
    parser.add_argument("--plot", type=Path, help="Write the curves to this PNG")
    args = parser.parse_args()
    rows = {run: metrics(run) for run in args.runs}
    # a regressor's runs record val_mae (dex, lower is better) instead of val_accuracy
    score = "mae" if all(r and "val_mae" in r[0] for r in rows.values()) else "accuracy"
    lower = score == "mae"
    split = args.split
    if split == "auto":  # test when every run recorded a test curve (train.test_curve)
        every = all(r and all(f"test_{score}" in row for row in r) for r in rows.values())
        split = "test" if every else "val"
    levels = [float(x) for x in args.levels.split(",")]
    marks = [float(x) for x in args.minutes.split(",")]
    curves = [curve(run, rows[run], split, score) for run in args.runs]

    def shown(value: float) -> str:
        return f"{value:.4f}" if lower else f"{100 * value:.2f}"

    def reached(points: list[dict[str, Any]], level: float) -> str:
        hit = next(
            (p for p in points if (p["score"] <= level if lower else p["score"] >= level)), None
        )
        return "-" if hit is None else f"{hit['minutes']:.0f} min (ep {hit['epoch']})"

    def by_minute(points: list[dict[str, Any]], mark: float) -> str:
        # the last epoch that ended by the mark: what the run had to show after that long
        done = [p for p in points if p["minutes"] <= mark + 1e-9]
        return shown(done[-1]["score"]) if done else "-"

    name = "MAE (dex)" if lower else "accuracy"
    print(f"Minutes (epoch) at which {split} {name} first reached each level:\n")
    heads = [f"{split} {lv:g} dex" if lower else f"{split} {lv:.1%}" for lv in levels]
    table(curves, heads, levels, reached)
    unit = "MAE (dex)" if lower else "accuracy (%)"
    print(f"\n{split} {unit} of the last epoch finished by each training minute:\n")
    table(curves, [f"{m:g} min" for m in marks], marks, by_minute)

    second = "R^2" if lower else "macro AUC"
    for run_name, points in curves:
        print(
            f"\n{run_name}: epoch, training minutes, images seen (M), {split} {name}, "
            f"{second}, img/s"
        )
        for p in points:
            print(
                f"  {p['epoch']:3d} {p['minutes']:7.1f} {p['images'] / 1e6:6.2f} "
                f"{p['score']:.4f} {p['second']:.5f} {p['images_per_s']:6.0f}"
            )
    if args.plot:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for run_name, points in curves:
            ax.plot(
                [p["minutes"] for p in points], [p["score"] for p in points], "o-", label=run_name
            )
        label = "validation" if split == "val" else "test"
        if lower:
            ax.set(xlabel="training minutes", ylabel=f"{label} MAE (dex)", yscale="log")
        else:
            low = min(p["score"] for _, points in curves for p in points[len(points) // 3 :])
            ax.set(
                xlabel="training minutes",
                ylabel=f"{label} accuracy",
                ylim=(max(0.0, low - 0.01), 1.0),
            )
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
