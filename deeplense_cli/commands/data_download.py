"""``deeplense data download``: fetch a released dataset, verify and unpack it."""

from __future__ import annotations

from typing import Any

import click

from deeplense_cli.commands.options import data_root_option
from deeplense_cli.core import paths
from deeplense_cli.core.console import console, err_console


@click.command()
@click.argument("dataset", metavar="Model_I|Model_II|Model_III")
@data_root_option
@click.option(
    "--url-base",
    default=None,
    help="Mirror serving URL/<Name>.tgz and URL/<Name>_test.tgz instead of Google Drive "
    "(or set DEEPLENSE_DOWNLOAD_URL).",
)
@click.option("--keep-archive", is_flag=True, help="Keep the .tgz files after unpacking.")
def download(dataset: str, data_root: str | None, url_base: str | None, keep_archive: bool) -> None:
    """Download a released dataset (train and test archives), verify and unpack it.

    An interrupted download resumes where it stopped when the command is run again.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from deeplense_cli.data.download import download_dataset

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        results = download_dataset(
            dataset,
            data_root=data_root,
            url_base=url_base,
            progress=progress,
            keep_archive=keep_archive,
        )
    for r in results:
        console().print(f"{r.status}: {r.folder}", markup=False, soft_wrap=True)
    console().print(f"Data root: {paths.data_root(data_root)}", markup=False, soft_wrap=True)
