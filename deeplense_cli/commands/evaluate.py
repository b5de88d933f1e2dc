"""``deeplense evaluate RUN``: metrics, ROC and confusion matrix on a held-out split."""

from __future__ import annotations

import click

from deeplense_cli.commands.display import evaluation_tables
from deeplense_cli.core.console import console, err_console, print_json
from deeplense_cli.runs.rundir import RunDir


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(exists=True),
    help="Evaluate on this class-per-folder tree instead.",
)
@click.option("--dataset", help="Evaluate on this dataset's test folder (e.g. Model_III).")
@click.option("--data-root", type=click.Path(), help="Data root for --dataset.")
@click.option(
    "--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True
)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON.")
def evaluate(
    run_dir: str,
    split: str,
    data_path: str | None,
    dataset: str | None,
    data_root: str | None,
    checkpoint: str,
    device: str,
    batch_size: int,
    as_json: bool,
) -> None:
    """Evaluate a trained run: accuracy, per-class ROC AUC (softmax, one-vs-rest), macro and
    micro AUC, confusion matrix, precision and recall."""
    from deeplense_cli.evaluation.evaluate import evaluate_run

    run = RunDir.open(run_dir)
    metrics = evaluate_run(
        run,
        split=split,
        data=data_path,
        dataset=dataset,
        data_root=data_root,
        checkpoint=checkpoint,
        device=device,
        batch_size=batch_size,
    )
    if as_json:
        print_json(metrics)
        return
    console().print(*evaluation_tables(metrics, f"{metrics['model']} on the {metrics['source']}"))
    written = "metrics.json, roc.png, confusion_matrix.png"
    if metrics.get("axion_mass_bins"):
        written += ", axion_mass.png"
    err_console().print(f"Wrote {written} to {metrics['out_dir']}")
