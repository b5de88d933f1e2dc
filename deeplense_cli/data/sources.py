"""Where a dataset lives: a released name under the data root, or any folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deeplense_cli.core import paths
from deeplense_cli.core.errors import DeepLenseError, did_you_mean

# The released datasets and their classes (each a folder of .npy files). Their order is part of
# every simulated image's seed (deeplense_cli.simulate.streams).
KNOWN_DATASETS = ("Model_I", "Model_II", "Model_III")
KNOWN_CLASSES = ("axion", "cdm", "no_sub")
# A dataset's two folders: NAME for training and NAME_test beside it (test_folder). Their order
# is part of every simulated image's seed as well.
DATASET_SPLITS = ("train", "test")


@dataclass
class DataSource:
    name: str  # "Model_III" or the folder name
    train_dir: Path  # class-per-folder tree
    test_dir: Path | None  # e.g. Model_III_test, when present


def canonical_name(dataset: str) -> str | None:
    """``model_iii`` -> ``Model_III``; None for names that are not released datasets."""
    for known in KNOWN_DATASETS:
        if dataset.lower() == known.lower():
            return known
    return None


def test_folder(train_dir: Path) -> Path:
    """The test folder that belongs beside the training folder ``train_dir``."""
    return train_dir.parent / f"{train_dir.name}_test"


def _test_sibling(train_dir: Path) -> Path | None:
    sibling = test_folder(train_dir)
    return sibling if sibling.is_dir() else None


def resolve_source(
    dataset: str | None = None,
    data: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> DataSource:
    """A dataset by name (``Model_I|II|III``, case-insensitive, under the data root) or by path.

    A folder ``X`` with a sibling ``X_test`` uses that sibling as its test set.
    """
    if dataset and data:
        raise DeepLenseError("give either --dataset NAME or --data PATH, not both")
    if data:
        path = Path(data).expanduser()
        if not path.is_dir():
            raise DeepLenseError(
                f"{path} is not a folder; point --data at a class-per-folder tree "
                f"(e.g. {', '.join(f'DATA/{c}/*.npy' for c in KNOWN_CLASSES)})"
            )
        path = path.resolve()
        return DataSource(name=path.name, train_dir=path, test_dir=_test_sibling(path))
    if not dataset:
        raise DeepLenseError(
            f"no dataset given; use --dataset {'|'.join(KNOWN_DATASETS)} or --data PATH"
        )
    root = paths.data_root(data_root)
    name = canonical_name(dataset)
    if name is None:
        if (root / dataset).is_dir():  # any folder under the data root, by exact name
            name = dataset
        else:
            raise DeepLenseError(
                f"unknown dataset {dataset!r}{did_you_mean(dataset, KNOWN_DATASETS)}; "
                f"known: {', '.join(KNOWN_DATASETS)} "
                f"(or a folder under {root}, or --data PATH)"
            )
    train_dir = root / name
    if not train_dir.is_dir():
        raise DeepLenseError(
            f"dataset {name} is not in {root}; get it with `deeplense data simulate {name}` "
            f"or `deeplense data download {name}` (or set --data-root / DEEPLENSE_DATA_ROOT)"
        )
    return DataSource(name=name, train_dir=train_dir, test_dir=_test_sibling(train_dir))
