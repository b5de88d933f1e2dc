"""``deeplense data info|show``: describe and draw datasets."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from deeplense_cli.commands.options import data_root_option
from deeplense_cli.core.console import console, err_console, print_json
from deeplense_cli.core.ranges import check_number
from deeplense_cli.data import EXAMPLES_PER_CLASS, MAX_EXAMPLES_PER_CLASS
from deeplense_cli.data.sources import DATASET_SPLITS


@contextlib.contextmanager
def _cache_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr, shown only while a cache is being built."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
    ) as bar:
        task: list[Any] = []

        def update(done: int, total: int) -> None:
            if not task:
                task.append(bar.add_task(label, total=total))
            bar.update(task[0], completed=done, total=total)

        yield update


def _fmt_range(r: dict[str, float] | None) -> str:
    if not r:
        return "-"
    return f"{r['min']:.4g} .. {r['max']:.4g} (mean {r['mean']:.4g})"


def _fmt_mass(m: dict[str, Any] | None) -> str:
    return f"{m['min']:.3e} .. {m['max']:.3e} eV ({m['count']} images)" if m else "-"


@click.command()
@click.argument("target", metavar="PATH|NAME")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@data_root_option
def info(target: str, as_json: bool, data_root: str | None) -> None:
    """Describe a dataset: classes, counts per split, image shape and dtype, value and
    axion-mass ranges, bad files.

    PATH|NAME is a class-per-folder tree (a sibling PATH_test is its test set) or a
    released dataset name (Model_I, Model_II, Model_III) under the data root.
    """
    from deeplense_cli.data.summary import dataset_info

    with _cache_progress("Indexing images") as progress:
        result = dataset_info(target, data_root=data_root, progress=progress)
    if as_json:
        print_json(result)
        return
    from rich.markup import escape
    from rich.table import Table

    con = console()
    splits = [(k, result[k]) for k in DATASET_SPLITS if result[k] is not None]
    table = Table(title=f"{result['name']}: images per class")
    table.add_column("class")
    for split, _ in splits:
        table.add_column(f"{split} folder", justify="right")
    table.add_column("values (min .. max)")
    table.add_column("axion mass")
    for c in result["classes"]:
        counts = [str(s["counts"].get(c, 0)) for _, s in splits]
        pc = result["train"]["per_class"][c]
        table.add_row(c, *counts, _fmt_range(pc["values"]), _fmt_mass(pc["axion_mass"]))
    table.add_row("[bold]total", *[f"[bold]{s['total']}" for _, s in splits], "", "")
    con.print(table)
    for split, s in splits:
        shape = "x".join(str(n) for n in s["image_shape"])
        dtypes = escape(", ".join(f"{k} ({v})" for k, v in s["source_dtypes"].items()))
        con.print(f"[bold]{split}[/bold] folder {escape(s['path'])}", soft_wrap=True)
        con.print(f"  image shape {shape} (C x H x W), stored as {dtypes}; cached as float32")
        con.print(f"  values {_fmt_range(s['values'])}; axion mass {_fmt_mass(s['axion_mass'])}")
        con.print(f"  bad files: {s['bad_files']}")
        for bad in s["bad_examples"][:5]:
            con.print(f"    {bad['file']}: {bad['reason']}", markup=False, soft_wrap=True)
        for w in s["warnings"]:
            err_console().print(f"warning: {w}", markup=False, soft_wrap=True)
        con.print(f"  cache: {s['cache']}", markup=False, soft_wrap=True)


@click.command()
@click.argument("target", metavar="PATH|NAME")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file.")
@click.option(
    "--per-class",
    default=EXAMPLES_PER_CLASS,
    show_default=True,
    type=int,
    help="Images per class; capped at what the largest class holds and at "
    f"{MAX_EXAMPLES_PER_CLASS}, so the PNG stays under 6,400 pixels wide.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Which examples to pick.")
@click.option("--test", "use_test", is_flag=True, help="Draw from the test folder.")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable files instead of failing.")
@data_root_option
def show(
    target: str,
    output: str,
    per_class: int,
    seed: int,
    use_test: bool,
    skip_bad: bool,
    data_root: str | None,
) -> None:
    """Draw example images of each class into a PNG grid (labelled with class and axion mass)."""
    from deeplense_cli.data.imageset import load_image_set
    from deeplense_cli.data.summary import dataset_folder, examples_per_class, save_example_grid

    check_number("--seed", seed, 0, integer=True)  # before the folder is read
    folder = dataset_folder(target, data_root, test=use_test)
    with _cache_progress("Indexing images") as progress:
        image_set = load_image_set(folder, skip_bad=skip_bad, progress=progress)
    for w in image_set.warnings:
        err_console().print(f"warning: {w}", markup=False, soft_wrap=True)
    shown = examples_per_class(image_set, per_class)
    path = save_example_grid(image_set, output, per_class=per_class, seed=seed)
    capped = ""
    if shown < per_class:
        why = (
            "the most a grid shows" if shown == MAX_EXAMPLES_PER_CLASS else "the most any class has"
        )
        capped = f"; --per-class {per_class} capped at {shown}, {why}"
    console().print(
        f"Wrote {path} ({len(image_set.classes)} classes x {shown} images from {folder}{capped})",
        markup=False,
        soft_wrap=True,
    )
