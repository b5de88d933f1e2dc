"""The accuracy benchmark: every architecture x dataset, trained and tested the same way.

Each cell trains into ``BENCH/runs/<model>-<dataset>/`` and writes
``BENCH/results/<model>-<dataset>.json`` when it is done; re-running skips finished cells and
resumes interrupted ones. ``results.md`` is rebuilt from the result files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deeplense_cli.core import atomic
from deeplense_cli.core.cpu import cpu_model
from deeplense_cli.core.device import available_cores
from deeplense_cli.core.errors import DeepLenseError, did_you_mean
from deeplense_cli.core.version import __version__
from deeplense_cli.data import KNOWN_DATASETS
from deeplense_cli.data.sources import canonical_name
from deeplense_cli.registry.manager import architectures, get_architecture
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training.config import resolve
from deeplense_cli.training.loop import train

DATASETS = KNOWN_DATASETS


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str

    @property
    def key(self) -> str:
        return f"{self.model.lower()}-{self.dataset}"


def plan(models: str, datasets: str) -> list[Cell]:
    """Cells for ``models`` ("all" or comma list) x ``datasets`` (comma list)."""

    if models.strip().lower() == "all":
        names = [a.name for a in architectures().values()]
    else:
        names = [get_architecture(m.strip()).name for m in models.split(",") if m.strip()]
    sets = []
    for d in datasets.split(","):
        name = canonical_name(d.strip())
        if name is None:
            raise DeepLenseError(
                f"unknown dataset {d.strip()!r}{did_you_mean(d.strip(), DATASETS)}; "
                f"use {', '.join(DATASETS)}"
            )
        sets.append(name)
    if not names or not sets:
        raise DeepLenseError("nothing to benchmark: give --models and --datasets")
    return [Cell(m, d) for d in sets for m in names]


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass

    cpu = cpu_model()

    return f"{cpu} ({available_cores()} cores)"


def result_path(bench_dir: Path, cell: Cell) -> Path:
    return bench_dir / "results" / f"{cell.key}.json"


def run_cell(
    cell: Cell, bench_dir: str | Path, settings: dict[str, Any], reporter: Any = None
) -> dict[str, Any]:
    """Train and test one cell (idempotent: a finished cell returns its stored result)."""
    import json

    bench_dir = Path(bench_dir)
    done = result_path(bench_dir, cell)
    if done.exists():
        return dict(json.loads(done.read_text()))
    flags = {
        "model": {"name": cell.model},
        "data": {"dataset": cell.dataset, **settings.get("data", {})},
        "train": dict(settings.get("train", {})),
    }
    config = resolve(settings.get("file_config") or {}, flags, settings.get("overrides") or {})
    run_path = bench_dir / "runs" / cell.key
    resume = (run_path / "config.yaml").exists()
    run_path.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_path)
    start = time.time()
    result = train(config, run, reporter=reporter, resume=resume, evaluate=True)
    ev = result.evaluation or {}
    split = run.read_record("split")
    row = {
        "model": cell.model,
        "dataset": cell.dataset,
        "accuracy": ev.get("accuracy"),
        "auc": ev.get("auc"),
        "macro_auc": ev.get("macro_auc"),
        "micro_auc": ev.get("micro_auc"),
        "axion_mass_bins": ev.get("axion_mass_bins"),
        "test_images": ev.get("n"),
        "train_images": split.get("sizes", {}).get("train"),
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "wall_seconds": sum(r.get("train_seconds", 0.0) for r in result.history)
        or time.time() - start,
        # how fast this machine trained the model: under --max-minutes it decides the epochs
        "train_images_per_s": _images_per_second(result.history),
        "hardware": hardware(),
        "deeplense_version": __version__,
        "run_dir": str(run.path),
    }
    atomic.write_json(done, row)
    return row


def _images_per_second(history: list[dict[str, Any]]) -> float | None:
    """Training images per second over all epochs (time-weighted, not a mean of epochs)."""
    seconds = sum(float(r.get("train_seconds") or 0.0) for r in history)
    images = sum(
        float(r.get("train_images_per_s") or 0.0) * float(r.get("train_seconds") or 0.0)
        for r in history
    )
    return images / seconds if seconds > 0 else None


def _fmt_cell(r: dict[str, Any] | None) -> str:
    if not r or r.get("accuracy") is None:
        return "-"
    aucs = "/".join(
        f"{v:.4f}" if isinstance(v, float) else "-" for v in (r.get("auc") or {}).values()
    )
    macro = r.get("macro_auc")
    macro_s = f"{macro:.4f}" if isinstance(macro, float) else "-"
    return f"{100 * r['accuracy']:.2f} ({aucs}; macro {macro_s})"


def _axion_mass_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A table of axion recall per axion-mass bin, for the cells whose test images carry masses."""
    with_bins = [r for r in rows if r.get("axion_mass_bins")]
    if not with_bins:
        return []
    edges = sorted(
        {
            (b["log10_mass_min"], b["log10_mass_max"])
            for r in with_bins
            for b in r["axion_mass_bins"]
        }
    )
    lines = [
        "",
        "Axion recall % by log10 axion mass in eV (the lightest axions make the longest vortices)",
        "",
        "| model | dataset | " + " | ".join(f"{lo:g} to {hi:g}" for lo, hi in edges) + " |",
        "| --- | --- |" + " --- |" * len(edges),
    ]
    for r in with_bins:
        by = {(b["log10_mass_min"], b["log10_mass_max"]): b for b in r["axion_mass_bins"]}
        cells = [f"{100 * by[e]['recall']:.1f} (n={by[e]['n']})" if e in by else "-" for e in edges]
        lines.append(f"| {r['model']} | {r['dataset']} | " + " | ".join(cells) + " |")
    return lines


def write_table(bench_dir: str | Path) -> Path:
    """Rebuild ``results.md`` from the per-cell result files."""
    import json

    bench_dir = Path(bench_dir)
    rows = [json.loads(p.read_text()) for p in sorted((bench_dir / "results").glob("*.json"))]
    models = sorted({r["model"] for r in rows}, key=str.lower)
    sets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    index = {(r["model"], r["dataset"]): r for r in rows}
    classes = next((list((r.get("auc") or {}).keys()) for r in rows if r.get("auc")), [])
    lines = [
        "Test accuracy % (one-vs-rest AUC " + "/".join(classes) + "; macro AUC)",
        "",
        "| model | " + " | ".join(sets) + " |",
        "| --- |" + " --- |" * len(sets),
    ]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(_fmt_cell(index.get((m, d))) for d in sets) + " |")
    lines += [
        "",
        "| model | dataset | epochs (best) | train images | test images | train time "
        "| train img/s | hardware |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speed = r.get("train_images_per_s")
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['epochs']} ({r['best_epoch']}) | "
            f"{r.get('train_images') or '-'} | {r.get('test_images') or '-'} | "
            f"{r['wall_seconds'] / 60:.1f} min | {f'{speed:.0f}' if speed else '-'} | "
            f"{r['hardware']} |"
        )
    lines += _axion_mass_lines(rows)
    out = bench_dir / "results.md"
    atomic.write_text(out, "\n".join(lines) + "\n")
    return out
