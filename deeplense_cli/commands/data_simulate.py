"""``deeplense data simulate``: write a Model_I/II/III dataset with lenstronomy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deeplense_cli import simulate as engine
from deeplense_cli.core import paths
from deeplense_cli.core.console import console
from deeplense_cli.data import KNOWN_CLASSES


@click.command(name="simulate")
@click.argument("model", metavar="MODEL")
@click.option(
    "--train-per-class",
    type=int,
    default=engine.TRAIN_PER_CLASS,
    show_default=True,
    help="Training images per class (written to OUT/MODEL/CLASS).",
)
@click.option(
    "--test-per-class",
    type=int,
    default=engine.TEST_PER_CLASS,
    show_default=True,
    help="Test images per class (written to OUT/MODEL_test/CLASS).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Every image depends only on (seed, model, split, class, index).",
)
@click.option("--workers", type=int, default=None, help="Worker processes [default: all cores].")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data root [default: the deeplense data root].",
)
@click.option(
    "--classes",
    default=",".join(KNOWN_CLASSES),
    show_default=True,
    help=f"Comma-separated subset of {','.join(KNOWN_CLASSES)}.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override the dataset's recipe (repeatable; recorded in recipe.json of each split "
    f"folder). Keys: {engine.known_keys(described=True)}.",
)
def simulate(
    model: str,
    train_per_class: int,
    test_per_class: int,
    seed: int,
    workers: int | None,
    out: Path | None,
    classes: str,
    settings: tuple[str, ...],
) -> None:
    """Simulate a DeepLense dataset (MODEL: Model_I, Model_II or Model_III) with lenstronomy.

    Follows the published recipe, or that recipe with --set overrides, e.g.
    `--set psf_fwhm=0.2 --set lens_light=true`, and writes the released layout. Re-running the
    same command resumes: finished files are kept, missing ones are written. A folder that
    holds images of another recipe is refused.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
    from rich.text import Text

    spec = engine.model_spec(model)
    recipe = engine.resolve_recipe(spec.name, engine.parse_assignments(settings))
    selected = engine.parse_classes(classes)
    root = paths.data_root(out)
    n_workers = engine.check_request(train_per_class, test_per_class, seed, workers)
    engine.check_records(root, recipe, train_per_class, test_per_class)
    total = (train_per_class + test_per_class) * len(selected)
    con = console()
    size = recipe.image_size
    con.print(
        f"Simulating [bold]{spec.name}[/] ({size}x{size}, "
        f'{recipe.pixel_scale}"/px) classes {", ".join(selected)}: '
        f"{train_per_class} train + {test_per_class} test per class, seed {seed}, "
        f"{n_workers} worker(s)"
    )
    if recipe.overrides():
        con.print(f"Recipe overrides: {engine.format_overrides(recipe.overrides())}", markup=False)
    con.print(
        f"Writing to {engine.split_dir(root, spec.name, 'train')}/ and "
        f"{engine.split_dir(root, spec.name, 'test')}/"
    )

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} img/s" if speed else "- img/s", style="cyan")

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=con,
        transient=False,
    ) as bar:
        task = bar.add_task(spec.name, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        summary: dict[str, Any] = engine.simulate_dataset(
            spec.name,
            root,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            seed=seed,
            workers=n_workers,
            classes=selected,
            progress=advance,
            recipe=recipe,
        )

    table = Table(title=f"{spec.name} simulation summary")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("written", f"{summary['written']:,}")
    table.add_row("already present (kept)", f"{summary['skipped']:,}")
    table.add_row("seconds", f"{summary['seconds']:.1f}")
    table.add_row("images/s (incl. worker start-up)", f"{summary['images_per_s']:,.1f}")
    table.add_row("workers", str(summary["workers"]))
    table.add_row("train dir", summary["train_dir"])
    table.add_row("test dir", summary["test_dir"])
    con.print(table)
