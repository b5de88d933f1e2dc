"""Summaries (``deeplense data info``) and example grids (``deeplense data show``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.data import EXAMPLES_PER_CLASS, MAX_EXAMPLES_PER_CLASS
from deeplense_cli.data.imageset import ImageSet, Progress, load_image_set
from deeplense_cli.data.sources import DataSource, resolve_source

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def source_for(target: str, data_root: str | os.PathLike[str] | None = None) -> DataSource:
    """``target`` is an existing folder, else a dataset name under the data root."""
    if Path(target).expanduser().is_dir():
        return resolve_source(data=target)
    return resolve_source(dataset=target, data_root=data_root)


def dataset_folder(
    target: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None = None,
    test: bool = False,
) -> Path:
    """The training folder of ``target`` (a folder, or a dataset name under the data root),
    or with ``test`` its test folder (``X_test`` beside it)."""
    source = source_for(os.fspath(target), data_root)
    if not test:
        return source.train_dir
    if source.test_dir is None:
        raise DeepLenseError(f"{source.name} has no test folder ({source.train_dir}_test)")
    return source.test_dir


def _range(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"min": float(values[:, 0].min()), "max": float(values[:, 1].max()),
            "mean": float(values[:, 2].mean())}  # fmt: skip


def summarize(image_set: ImageSet) -> dict[str, Any]:
    """Classes, counts, shape, source dtypes, value and axion-mass ranges, bad files."""
    stats = image_set.stats if image_set.stats is not None else np.zeros((0, 3))
    per_class = {}
    for i, c in enumerate(image_set.classes):
        sel = image_set.labels == i
        masses = image_set.axion_mass[sel]
        masses = masses[np.isfinite(masses)]
        per_class[c] = {
            "count": int(sel.sum()),
            "values": _range(stats[sel]),
            "axion_mass": {"count": int(masses.size), "min": float(masses.min()),
                           "max": float(masses.max())} if masses.size else None,
        }  # fmt: skip
    masses = image_set.axion_mass[np.isfinite(image_set.axion_mass)]
    return {
        "path": str(image_set.root),
        "classes": list(image_set.classes),
        "counts": image_set.counts(),
        "total": len(image_set),
        "image_shape": list(image_set.image_shape),
        "cache_dtype": str(image_set.images.dtype),
        "source_dtypes": dict(image_set.source_dtypes),
        "values": _range(stats),
        "axion_mass": {"count": int(masses.size), "min": float(masses.min()),
                       "max": float(masses.max())} if masses.size else None,
        "per_class": per_class,
        "bad_files": len(image_set.skipped),
        "bad_examples": [{"file": f, "reason": r} for f, r in image_set.skipped[:10]],
        "warnings": list(image_set.warnings),
        "cache": str(image_set.cache_dir) if image_set.cache_dir else None,
    }  # fmt: skip


def dataset_info(
    target: str,
    data_root: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Describe the training folder and (when present) the test folder of ``target``.

    Bad files are counted, not fatal (the folders are read with ``skip_bad=True``).
    """
    source = source_for(target, data_root)
    train = load_image_set(source.train_dir, skip_bad=True, progress=progress)
    info: dict[str, Any] = {
        "name": source.name,
        "classes": list(train.classes),
        "train": summarize(train),
        "test": None,
    }
    if source.test_dir is not None:
        test = load_image_set(source.test_dir, skip_bad=True, progress=progress)
        info["test"] = summarize(test)
    return info


def examples_per_class(image_set: ImageSet, per_class: int) -> int:
    """How many columns a grid of ``per_class`` examples has: ``per_class``, capped at the
    largest class (a class with fewer images leaves its last panels empty) and at
    :data:`~deeplense_cli.data.MAX_EXAMPLES_PER_CLASS`."""
    if per_class < 1:
        raise DeepLenseError(f"--per-class must be at least 1, got {per_class}")
    largest = max(image_set.counts().values(), default=0)
    return max(1, min(per_class, largest, MAX_EXAMPLES_PER_CLASS))


def pick_examples(image_set: ImageSet, per_class: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``per_class`` indices of each class, chosen by ``seed``, sorted."""
    check_number("--seed", seed, 0, integer=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(image_set.classes)):
        members = np.flatnonzero(image_set.labels == i)
        k = min(per_class, len(members))
        out.append(np.sort(rng.choice(members, size=k, replace=False)))
    return out


def example_grid(image_set: ImageSet, per_class: int = EXAMPLES_PER_CLASS, seed: int = 0) -> Figure:
    """A figure with one row per class, ``per_class`` images each (at most what the largest
    class has, see :func:`examples_per_class`), titled with the axion mass."""
    per_class = examples_per_class(image_set, per_class)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picks = pick_examples(image_set, per_class, seed)
    rows, cols = len(image_set.classes), per_class
    fig = Figure(figsize=(2.0 * cols, 2.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (cname, idx) in enumerate(zip(image_set.classes, picks, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(idx):
                ax.set_axis_off()
                continue
            i = int(idx[c])
            ax.imshow(np.asarray(image_set.images[i, 0]), cmap="inferno", origin="lower")
            mass = float(image_set.axion_mass[i])
            title = cname if math.isnan(mass) else f"{cname}\nm_a={mass:.2e} eV"
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"{image_set.root.name}: {per_class} per class", fontsize=10)
    fig.tight_layout()
    return fig


def save_example_grid(
    image_set: ImageSet,
    out: str | os.PathLike[str],
    per_class: int = EXAMPLES_PER_CLASS,
    seed: int = 0,
) -> Path:
    """The :func:`example_grid` as a PNG file."""
    examples_per_class(image_set, per_class)  # a bad count fails before the name is checked
    out_path = Path(out)
    if out_path.suffix.lower() != ".png":
        raise DeepLenseError(f"{out_path}: the grid is written as PNG; use a .png file name")
    fig = example_grid(image_set, per_class, seed)
    atomic.sweep(out_path.parent)  # what killed commands left half-written there
    with atomic.atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_path
