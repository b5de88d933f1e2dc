"""``deeplense predict MODEL INPUT...``: classes for image files, from an .onnx or a run."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from deeplense_cli.commands.options import checkpoint_option, tta_option
from deeplense_cli.core.console import console, err_console, print_json
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.deploy.defaults import DEVICES, OUTPUT_FORMATS, PREDICT_BATCH_SIZE

if TYPE_CHECKING:
    from deeplense_cli.deploy.predict import Summary


def flag_line(summary: Summary) -> str:
    """The one line that says how many images were flagged, what that means, what to do."""
    from deeplense_cli.evaluation.ood import explanation

    share = summary.flagged / summary.images if summary.images else 0.0
    return (
        f"{summary.flagged} of {summary.images} image(s) ({share:.0%}) "
        + explanation(summary.init_source)
        + (" (labelled 'unknown': --reject-ood)" if "unknown" in summary.counts else "")
    )


@click.command()
@click.argument("model", type=click.Path())
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default=DEVICES[0],
    show_default=True,
    help="auto: TensorRT, else CUDA, else CPU (the first that loads). An explicit cuda or "
    "tensorrt that cannot load is an error, never a silent CPU fallback.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help=f"Write predictions to FILE, by extension ({', '.join(OUTPUT_FORMATS)}; .jsonl is JSON "
    "Lines).",
)
@click.option("--batch-size", type=click.IntRange(1), default=PREDICT_BATCH_SIZE, show_default=True)
@click.option(
    "--resize",
    is_flag=True,
    help="Resize images whose size differs from the model's (bilinear interpolation, "
    "stretching non-square images) and repeat one channel over the model's channels. "
    "Without it a mismatch is an error.",
)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable files (listed at the end).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="CPU threads [default: OMP_NUM_THREADS, else the available cores].",
)
@checkpoint_option("For a run directory MODEL.")
@tta_option
@click.option(
    "--reject-ood",
    is_flag=True,
    help="Label images the model's out-of-distribution detector flags 'unknown' instead of "
    "a class (every prediction carries in_distribution and ood_score either way).",
)
@click.option(
    "--mass-model",
    metavar="MODEL",
    help="An axion-mass model (.onnx, run or shipped name, e.g. Model_III-axion-mass) that "
    "adds log10 of the axion mass to every image MODEL classifies as axion; an image either "
    "model's detector flags is out of distribution.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (the summary, and the predictions unless -o) instead of tables.",
)
@click.option(
    "--jsonl",
    "as_jsonl",
    is_flag=True,
    help="Stream one JSON line per file as it is predicted (the summary goes to stderr).",
)
def predict(
    model: str,
    inputs: tuple[str, ...],
    device: str,
    output: str | None,
    batch_size: int,
    resize: bool,
    skip_bad: bool,
    threads: int | None,
    checkpoint: str,
    tta: str | None,
    reject_ood: bool,
    mass_model: str | None,
    as_json: bool,
    as_jsonl: bool,
) -> None:
    """Predict the class of each image file in INPUTS (files or folders, searched
    recursively; .npy including the released axion [image, mass] arrays, .npz, FITS, PNG,
    JPEG).

    MODEL is an exported .onnx file (ONNX Runtime; torch is not needed), a run directory
    (PyTorch) or the name of a model that ships with deeplense (`deeplense models
    pretrained`). Prints one row per file with every class probability and whether the
    image looks like the model's training data (in_distribution, from the model's
    out-of-distribution detector; a flagged image's prediction is unreliable), then the
    number of files predicted as each class. An axion-mass MODEL gives log10 of the axion
    mass of every image instead; --mass-model adds it to a classifier's axions.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from deeplense_cli.deploy.predict import Prediction, prediction_record
    from deeplense_cli.deploy.predict import predict as run_predict

    if as_json and as_jsonl:
        raise DeepLenseError("--json and --jsonl both print to stdout; choose one")

    rows: list[Prediction] = []
    classes: list[str] = []
    progress = Progress(
        TextColumn("[bold]predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
    )
    task: list[Any] = []

    def on_start(summary: Summary, n_files: int) -> None:
        classes.extend(summary.classes)
        err_console().print(f"{summary.model}: {n_files} file(s)")
        if summary.mass_model:
            err_console().print(f"axion masses: {summary.mass_model}")
        for warning in summary.warnings:
            err_console().print(f"[yellow]Warning:[/] {warning}")
        task.append(progress.add_task("predict", total=n_files, rate=""))
        progress.start()

    def on_progress(n: int) -> None:
        t = progress.tasks[0]
        rate = f"{t.completed / t.elapsed:.0f} img/s" if t.elapsed else ""
        progress.update(task[0], advance=n, rate=rate)

    def on_prediction(pred: Prediction) -> None:
        if as_jsonl:
            sys.stdout.write(json.dumps(prediction_record(pred, classes)) + "\n")
        else:
            rows.append(pred)

    try:
        summary = run_predict(
            model,
            inputs,
            output=output,
            device=device,
            batch_size=batch_size,
            resize=resize,
            skip_bad=skip_bad,
            threads=threads,
            checkpoint=checkpoint,
            on_start=on_start,
            progress=on_progress,
            on_prediction=None if output else on_prediction,
            reject_ood=reject_ood,
            tta=tta,
            mass_model=mass_model,
        )
    finally:
        progress.stop()

    if as_json:
        if summary.flagged:
            err_console().print(f"Warning: {flag_line(summary)}", soft_wrap=True)
        document = summary.to_dict()
        if not output:
            document["predictions"] = [prediction_record(p, classes) for p in rows]
        print_json(document)
        return
    if not output and not as_jsonl:
        table = Table(title="Predictions")
        table.add_column("file", overflow="fold")
        table.add_column("predicted")
        for c in classes:
            table.add_column(f"p({c})", justify="right")
        # an axion-mass model, alone or after the classifier (--mass-model)
        masses = bool(mass_model) or any(pred.log10_axion_mass is not None for pred in rows)
        if masses:
            table.add_column("log10 m_a (eV)", justify="right")
        table.add_column("in distribution")
        for pred in rows:
            flag = {None: "-", True: "yes", False: "[red]NO[/]"}[pred.in_distribution]
            m = pred.log10_axion_mass
            mass = [] if not masses else ["-" if m is None else f"{m:.3f}"]
            table.add_row(
                pred.path, pred.predicted, *[f"{p:.4f}" for p in pred.probabilities], *mass, flag
            )
        console().print(table)

    counts = Table(title=f"{summary.images} image(s), {summary.images_per_second:.0f} img/s")
    counts.add_column("predicted class")
    counts.add_column("files", justify="right")
    counts.add_column("share", justify="right")
    for c in summary.counts:
        n = summary.counts.get(c, 0)
        counts.add_row(c, str(n), f"{n / summary.images:.1%}" if summary.images else "-")
    # With --jsonl, stdout holds only the JSON Lines.
    (err_console() if as_jsonl else console()).print(counts)
    for item in summary.skipped:
        err_console().print(f"[yellow]Skipped[/] {item}")
    if summary.flagged:
        err_console().print(f"[yellow]Warning:[/] {flag_line(summary)}", soft_wrap=True)
    if output:
        err_console().print(f"Wrote {summary.images} prediction(s) to {output}")
