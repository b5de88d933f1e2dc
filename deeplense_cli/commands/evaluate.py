"""``deeplense evaluate RUN|MODEL.onnx|NAME``: metrics, ROC and confusion matrix on held-out data."""

from __future__ import annotations

from pathlib import Path

import click

from deeplense_cli.commands.options import checkpoint_option, data_root_option, tta_option
from deeplense_cli.core.console import console, err_console, print_json
from deeplense_cli.evaluation import EVAL_BATCH_SIZE, SPLITS


@click.command()
@click.argument("target", metavar="RUN|MODEL")
@click.option("--split", type=click.Choice(SPLITS), default=SPLITS[0], show_default=True)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True),
    help="Evaluate on this class-per-folder tree instead.",
)
@click.option("--dataset", help="Evaluate on this dataset's test folder (e.g. Model_III).")
@data_root_option
@checkpoint_option()
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=EVAL_BATCH_SIZE, show_default=True)
@click.option(
    "--skip-bad", is_flag=True, help="Leave out unreadable or invalid files (says how many)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Write metrics.json and the figures here [default: RUN/evaluation*/, or for a model "
    "RUN_ROOT/evaluations/<model>-<folder>/].",
)
@tta_option
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
def evaluate(
    target: str,
    split: str,
    data_path: str | None,
    dataset: str | None,
    data_root: str | None,
    checkpoint: str,
    device: str,
    batch_size: int,
    skip_bad: bool,
    out_dir: str | None,
    tta: str | None,
    as_json: bool,
) -> None:
    """Evaluate a trained run directory, an exported .onnx file or a shipped model (by name,
    see `deeplense models pretrained`): accuracy, per-class ROC AUC (softmax, one-vs-rest),
    macro and micro AUC, confusion matrix, precision and recall, axion recall by mass.

    A run is evaluated with PyTorch on its own test split (or --split, --data, --dataset); an
    ONNX model with ONNX Runtime on --dataset (its test folder) or --data."""
    from deeplense_cli.commands.display import evaluation_tables
    from deeplense_cli.deploy.evaluate_onnx import evaluate_target

    metrics = evaluate_target(
        target,
        split=split,
        data=data_path,
        dataset=dataset,
        data_root=data_root,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
        skip_bad=skip_bad,
        out_dir=Path(out_dir) if out_dir else None,
        tta=tta,
    ).metrics
    for warning in metrics.get("warnings", []):
        err_console().print(f"warning: {warning}", markup=False, soft_wrap=True)
    if as_json:
        print_json(metrics)
        return
    console().print(*evaluation_tables(metrics, f"{metrics['model']} on the {metrics['source']}"))
    written = "metrics.json, roc.png, confusion_matrix.png"
    if metrics.get("task") == "axion-mass":
        written = "metrics.json, mass_scatter.png, mass_residuals.png"
    if metrics.get("axion_mass_bins"):
        written += ", axion_mass.png"
    err_console().print(f"Wrote {written} to {metrics['out_dir']}")
