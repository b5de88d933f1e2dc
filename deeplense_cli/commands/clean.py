"""``deeplense clean``: list and remove what killed deeplense commands left behind."""

from __future__ import annotations

from pathlib import Path

import click

from deeplense_cli.core import atomic, paths
from deeplense_cli.core.console import console, err_console


def _default_folders() -> list[Path]:
    """DEEPLENSE_HOME and the data and run roots, each once (a root inside another is
    walked with it)."""
    roots = [paths.home(), paths.data_root(), paths.run_root()]
    resolved = [r.resolve() for r in roots if r.is_dir()]
    return [r for r in dict.fromkeys(resolved) if not any(o in r.parents for o in resolved)]


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--dry-run", is_flag=True, help="Only list them; remove nothing.")
def clean(folders: tuple[str, ...], dry_run: bool) -> None:
    """Remove the temporary files and folders that killed deeplense commands left in FOLDERS
    and below [default: DEEPLENSE_HOME and the data and run roots].

    Every file is written as a hidden .NAME.XXXXXXXX.tmp beside NAME and renamed into place;
    a command killed mid-write leaves it (a checkpoint's is over 100 MB). Commands remove
    them from the folders they use; this cleans a whole tree. A temporary whose writer is
    still running is never touched."""
    roots = [Path(f) for f in folders] or _default_folders()
    found = [item for root in roots for item in atomic.sweep_tree(root, remove=not dry_run)]
    verb = "would remove" if dry_run else "removed"
    for path, size in found:
        console().print(f"{verb} {path} ({_mb(size)})", markup=False, soft_wrap=True)
    total = sum(size for _, size in found)
    where = ", ".join(str(r) for r in roots)
    err_console().print(
        f"{'Found' if dry_run else 'Removed'} {len(found)} abandoned temporary file(s) or "
        f"folder(s), {_mb(total)}, under {where}",
        markup=False,
        soft_wrap=True,
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
