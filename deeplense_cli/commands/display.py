"""What the commands print with rich: the training progress display and the metrics tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from deeplense_cli.training.reporters import JsonlReporter, SilentReporter


def fmt_value(value: Any, digits: int = 4) -> str:
    """A metric for a console line: floats to ``digits`` decimals, None as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class RichReporter:
    """Epoch and batch bars with loss and images/s; a line per epoch with validation metrics."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.epoch_task: Any = None
        self.batch_task: Any = None

    def start(self, info: dict[str, Any]) -> None:
        self.console.print(
            f"[bold]{info['model']}[/bold] ({info['parameters'] / 1e6:.2f} M parameters) on "
            f"{info['device']} (amp {info['amp']}); train {info['train']}, val {info['val']}, "
            f"test {info['test']} images; "
            + (
                "target log10 axion mass (the images that carry one)"
                if info.get("task") == "axion-mass"
                else f"classes {', '.join(info['classes'])}"
            )
        )
        if info.get("init"):
            self.console.print(f"Starting from {info['init']}")
        for note in info.get("notes", []):
            self.console.print(f"Note: {note}")
        for warning in info.get("warnings", []):
            self.console.print(f"[yellow]Warning:[/] {warning}")
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task(
            "epochs", total=info["epochs"], completed=info["start_epoch"], status=""
        )
        self.batch_task = self.progress.add_task(
            "batches", total=info["steps_per_epoch"], status=""
        )

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        if self.progress is None:
            return
        status = f"loss {loss:.4f}  {images_per_s:.0f} img/s"
        self.progress.update(
            self.batch_task,
            completed=step,
            total=steps,
            description=f"epoch {epoch}",
            status=status,
        )

    def epoch(self, row: dict[str, Any]) -> None:
        if self.progress is None:
            return
        self.progress.update(self.epoch_task, completed=row["epoch"])
        star = " *" if row.get("best") else ""
        if "val_mae" in row:  # --task axion-mass
            self.progress.console.print(
                f"epoch {row['epoch']:>3}  train loss {fmt_value(row['train_loss'])}  "
                f"val loss {fmt_value(row.get('val_loss'))}  MAE {fmt_value(row['val_mae'])} dex  "
                f"{fmt_value(row.get('train_images_per_s'), 0)} img/s{star}"
            )
            return
        self.progress.console.print(
            f"epoch {row['epoch']:>3}  train loss {fmt_value(row['train_loss'])}  "
            f"val loss {fmt_value(row.get('val_loss'))}  acc {fmt_value(row.get('val_accuracy'))}  "
            f"macro AUC {fmt_value(row.get('val_macro_auc'))}  "
            f"{fmt_value(row.get('train_images_per_s'), 0)} img/s{star}"
        )

    def end(self, summary: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
        msg = f"best epoch {summary['best_epoch']}"
        if summary.get("stopped_early"):
            msg += " (stopped early)"
        self.console.print(msg)


def make_reporter(mode: str) -> Any:
    if mode == "jsonl":
        return JsonlReporter()
    if mode == "quiet":
        return SilentReporter()
    return RichReporter()


def metrics_table(metrics: dict[str, Any], title: str = "Evaluation") -> Table:
    """A rich table: accuracy, AUCs, per-class precision/recall."""
    table = Table(title=f"{title} (n={metrics['n']})")
    table.add_column("class")
    table.add_column("AUC (one-vs-rest)", justify="right")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    for c in metrics["classes"]:
        table.add_row(
            c,
            fmt_value(metrics["auc"].get(c)),
            fmt_value(metrics["precision"].get(c)),
            fmt_value(metrics["recall"].get(c)),
        )
    table.add_section()
    table.add_row("macro", fmt_value(metrics.get("macro_auc")), "", "")
    table.add_row("micro", fmt_value(metrics.get("micro_auc")), "", "")
    table.add_row("accuracy", fmt_value(metrics.get("accuracy")), "", "")
    return table


def axion_mass_table(bins: list[dict[str, Any]], classes: list[str]) -> Table:
    """A rich table of ``metrics["axion_mass_bins"]``: recall per axion-mass bin."""
    table = Table(title="Axion images by axion mass (vortex half-length L)")
    table.add_column("log10 m_a (eV)")
    table.add_column("L (arcsec)", justify="right")
    table.add_column("n", justify="right")
    table.add_column("recall", justify="right")
    for c in classes:
        table.add_column(f"-> {c}", justify="right")
    for b in bins:
        short, long = b["vortex_half_length_arcsec"]
        table.add_row(
            f"{b['log10_mass_min']:g} to {b['log10_mass_max']:g}",
            f"{short:.3g}-{long:.3g}",
            str(b["n"]),
            fmt_value(b["recall"]),
            *(str(b["predicted"][c]) for c in classes),
        )
    return table


def evaluation_tables(metrics: dict[str, Any], title: str) -> list[Table]:
    """What ``evaluate`` and ``train`` print after an evaluation: the metrics table, and the
    axion-mass table when the evaluated images carried axion masses."""
    if metrics.get("task") == "axion-mass":
        return mass_tables(metrics, title)
    tables = [metrics_table(metrics, title=title)]
    if metrics.get("axion_mass_bins"):
        tables.append(axion_mass_table(metrics["axion_mass_bins"], metrics["classes"]))
    if metrics.get("ood"):
        tables.append(ood_table(metrics["ood"]))
    return tables


def mass_tables(metrics: dict[str, Any], title: str) -> list[Table]:
    """An axion-mass regressor's errors (dex of log10 m_a), overall and per mass bin."""
    overall = Table(title=f"{title} (n={metrics['n']}): log10 axion mass, dex")
    for column in ("MAE", "RMSE", "bias", "R^2", "MAE predicting the mean"):
        overall.add_column(column, justify="right")
    overall.add_row(
        *[fmt_value(metrics.get(k)) for k in ("mae", "rmse", "bias", "r2", "mae_mean_predictor")]
    )
    bins = Table(title="Error by axion mass")
    for column in ("log10 m_a (eV)", "images", "MAE (dex)", "bias (dex)"):
        bins.add_column(column, justify="right")
    for b in metrics.get("mass_bins", []):
        bins.add_row(
            f"[{b['log10_mass_min']:g}, {b['log10_mass_max']:g})",
            str(b["n"]),
            fmt_value(b["mae"]),
            fmt_value(b["bias"]),
        )
    return [overall, bins]


def ood_table(ood: dict[str, Any]) -> Table:
    """The out-of-distribution flag on the evaluated images: how many, and the accuracy on
    either side of it."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    table = Table(
        title=f"Out-of-distribution flag ({ood['method']}, threshold {ood['threshold']:.4g})"
    )
    for column in ("flagged", "share", "accuracy (not flagged)", "accuracy (flagged)"):
        table.add_column(column, justify="right")
    table.add_row(
        str(ood["flagged"]),
        share(ood["flagged_fraction"]),
        share(ood["accuracy_in_distribution"]),
        share(ood["accuracy_flagged"]),
    )
    return table
