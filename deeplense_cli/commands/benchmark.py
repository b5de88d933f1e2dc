"""``deeplense benchmark``: the accuracy table, every architecture x dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deeplense_cli.commands.options import (
    data_root_option,
    setting_help,
    slurm_flags,
    slurm_options,
)
from deeplense_cli.core import paths
from deeplense_cli.core.console import console, err_console
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import KNOWN_DATASETS


@click.command(context_settings={"show_default": True})
@click.option("--models", default="all", help="'all' or a comma list of architectures.")
@click.option("--datasets", default="Model_III", help=f"Comma list of {', '.join(KNOWN_DATASETS)}.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Benchmark folder (default: RUN_ROOT/benchmark).",
)
@data_root_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML config applied to every cell.",
)
@click.option("--epochs", type=int, help=setting_help("epochs"))
@click.option("--max-minutes", type=float, help="Time budget per cell (see train --max-minutes).")
@click.option("--batch-size", type=int, help=setting_help("batch_size", default=False))
@click.option("--max-train-per-class", type=int, help=setting_help("max_train_per_class", "data"))
@click.option("--max-test-per-class", type=int, help=setting_help("max_test_per_class", "data"))
@click.option("--device", help=setting_help("device"))
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any setting."
)
@click.option("--table-only", is_flag=True, help="Only rebuild results.md from finished cells.")
@click.option(
    "--parallelism", type=int, default=4, help="With --slurm: array tasks running at once."
)
@slurm_options(
    "Submit the sweep as one SLURM job array.",
    "With --slurm: wait for every job, then print the table.",
)
def benchmark(**kw: Any) -> None:
    """Train and test every architecture on every dataset and write a results table.

    Cells that finished are skipped when re-run; interrupted ones resume. Locally the cells
    run one after another; with --slurm they run as a job array, and the table is rewritten
    as each job finishes (RUN_ROOT/benchmark/results.md by default).
    """
    # The engine is imported here, not at the top: `deeplense --help` loads every command.
    from deeplense_cli.commands.display import RichReporter, fmt_value
    from deeplense_cli.training.benchmark import plan, result_path, run_cell, write_table
    from deeplense_cli.training.config import load_config_file, parse_overrides

    bench_dir = Path(kw["out_dir"]) if kw["out_dir"] else paths.run_root() / "benchmark"
    if kw["table_only"]:
        if not any((bench_dir / "results").glob("*.json")):
            raise DeepLenseError(
                f"{bench_dir} holds no finished benchmark cells (no results/*.json); "
                f"give the --out folder of a benchmark run"
            )
        out = write_table(bench_dir)
        console().print(out.read_text(), markup=False)
        return
    cells = plan(kw["models"], kw["datasets"])
    settings = {
        "file_config": load_config_file(kw["config_file"]) if kw["config_file"] else {},
        "overrides": parse_overrides(kw["overrides"]),
        "data": {
            k: v
            for k, v in {
                "data_root": str(paths.data_root(kw["data_root"])),
                "max_train_per_class": kw["max_train_per_class"],
                "max_test_per_class": kw["max_test_per_class"],
            }.items()
            if v is not None
        },
        "train": {
            k: v
            for k, v in {
                "epochs": kw["epochs"],
                "max_minutes": kw["max_minutes"],
                "batch_size": kw["batch_size"],
                "device": kw["device"],
            }.items()
            if v is not None
        },
    }
    todo = [c for c in cells if not result_path(bench_dir, c).exists()]
    err_console().print(
        f"Benchmark folder {bench_dir}: {len(cells)} cells, {len(cells) - len(todo)} already done"
    )
    if kw["slurm"] and todo:
        _submit(todo, bench_dir, settings, kw)
        return
    for i, cell in enumerate(todo, 1):
        err_console().print(f"[{i}/{len(todo)}] {cell.model} on {cell.dataset}")
        row = run_cell(cell, bench_dir, settings, reporter=RichReporter())
        err_console().print(
            f"  test accuracy {fmt_value(row['accuracy'])}, macro AUC {fmt_value(row['macro_auc'])}"
        )
    out = write_table(bench_dir)
    console().print(out.read_text(), markup=False)
    err_console().print(f"Results table: {out}")


def _submit(todo: list[Any], bench_dir: Path, settings: dict[str, Any], kw: dict[str, Any]) -> None:
    from deeplense_cli.cluster import wait
    from deeplense_cli.cluster.jobs import submit_benchmark
    from deeplense_cli.training.benchmark import write_table

    jobs = submit_benchmark(todo, bench_dir, settings, slurm_flags(kw), kw["parallelism"])
    for job, cell in zip(jobs, todo, strict=True):
        err_console().print(f"Submitted {job.job_id}: {cell.model} on {cell.dataset}")
    err_console().print(f"The table is rewritten as jobs finish: {bench_dir / 'results.md'}")
    if kw["wait"]:
        failures = 0
        for job in jobs:
            try:
                wait(job, poll=5.0)
            except Exception as exc:  # report every failed cell, then the table
                failures += 1
                err_console().print(f"{job.job_id}: {exc}")
        out = write_table(bench_dir)
        console().print(out.read_text(), markup=False)
        if failures:
            raise click.ClickException(f"{failures} benchmark job(s) failed; see above")
