"""Stratified, seeded train / validation / test splits.

Per class, the images are permuted by ``default_rng([seed, class index])`` (so one class's
split does not depend on the others). Without a test folder the first
``round(test_fraction * n)`` of that permutation are the held-out test set, which train and
validation never see and which does not change with ``val_fraction``; the rest is the
training pool. ``max_train_per_class`` caps the training pool (train + val) per class,
``max_test_per_class`` the test images per class; both keep a prefix of the permutation, so
they are deterministic. The validation set is ``round(val_fraction * pool)`` of the pool
(at least one image when ``val_fraction > 0`` and the pool has two or more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.imageset import ImageSet, load_image_set
from deeplense_cli.data.sources import DataSource, resolve_source


@dataclass
class Splits:
    train: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    test: ImageSet  # the same object as ``train`` for a held-out split
    test_idx: np.ndarray
    classes: list[str]
    source: DataSource | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_per_class: int | None = None
    max_test_per_class: int | None = None

    @property
    def test_source(self) -> str:
        return "held-out" if self.test is self.train else "test folder"

    def record(self) -> dict[str, Any]:
        """A JSON-able description, saved with each run (``split.json``)."""
        return {
            "dataset": self.source.name if self.source else None,
            "train_dir": str(self.train.root),
            "test_dir": str(self.test.root),
            "test_source": self.test_source,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction if self.test is self.train else None,
            "max_train_per_class": self.max_train_per_class,
            "max_test_per_class": self.max_test_per_class,
            "classes": list(self.classes),
            "image_shape": list(self.train.image_shape),
            "counts": {
                "train": self.train.counts(self.train_idx),
                "val": self.train.counts(self.val_idx),
                "test": self.test.counts(self.test_idx),
            },
            "sizes": {
                "train": len(self.train_idx),
                "val": len(self.val_idx),
                "test": len(self.test_idx),
            },
            "skipped_bad_files": len(self.train.skipped)
            + (0 if self.test is self.train else len(self.test.skipped)),
        }


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise DeepLenseError(f"{name} must be in [0, 1), got {value}")


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise DeepLenseError(f"{name} must be at least 1, got {value}")


def _class_permutations(labels: np.ndarray, n_classes: int, seed: int) -> list[np.ndarray]:
    out = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        out.append(members[np.random.default_rng([seed, c]).permutation(len(members))])
    return out


def _val_count(fraction: float, n: int) -> int:
    k = round(fraction * n)
    if fraction > 0 and k == 0 and n >= 2:
        k = 1
    return min(k, n - 1) if n > 0 else 0


def make_splits(
    source: DataSource,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    skip_bad: bool = False,
) -> Splits:
    """Split ``source`` into train/val (from its training folder) and test (see module doc)."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    _check_limit("max_train_per_class", max_train_per_class)
    _check_limit("max_test_per_class", max_test_per_class)
    train = load_image_set(source.train_dir, skip_bad=skip_bad)
    classes = train.classes
    held_out = source.test_dir is None
    if held_out:
        if val_fraction + test_fraction >= 1.0:
            raise DeepLenseError(
                f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}"
            )
        test = train
    else:
        assert source.test_dir is not None
        test = load_image_set(source.test_dir, classes=classes, skip_bad=skip_bad)
        if test.image_shape != train.image_shape:
            raise DeepLenseError(
                f"test images in {source.test_dir} are {test.image_shape} but training images "
                f"in {source.train_dir} are {train.image_shape}"
            )
    train_parts, val_parts, test_parts = [], [], []
    for c, perm in enumerate(_class_permutations(train.labels, len(classes), seed)):
        if held_out:
            n_test = round(test_fraction * len(perm))
            if test_fraction > 0 and n_test == 0 and len(perm) >= 3:
                n_test = 1
            test_c, pool = perm[:n_test], perm[n_test:]
            test_parts.append(test_c[:max_test_per_class])
        else:
            pool = perm
        pool = pool[:max_train_per_class]
        n_val = _val_count(val_fraction, len(pool))
        val_parts.append(pool[:n_val])
        train_parts.append(pool[n_val:])
        if len(pool) - n_val < 1:
            raise DeepLenseError(
                f"class {classes[c]} has no training images left after the splits; "
                "lower val/test fractions or add images"
            )
    if not held_out:
        for perm in _class_permutations(test.labels, len(classes), seed):
            test_parts.append(perm[:max_test_per_class])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    return Splits(
        train=train,
        train_idx=cat(train_parts),
        val_idx=cat(val_parts),
        test=test,
        test_idx=cat(test_parts),
        classes=classes,
        source=source,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_train_per_class=max_train_per_class,
        max_test_per_class=max_test_per_class,
    )


def load_splits(config: dict[str, Any]) -> Splits:
    """The splits a run's resolved ``config`` (its ``data`` section) asks for."""
    d = config["data"]
    if not d.get("dataset") and not d.get("data"):
        raise DeepLenseError("no data given; pass --dataset Model_III or --data PATH")
    source = resolve_source(
        dataset=d.get("dataset"), data=d.get("data"), data_root=d.get("data_root")
    )
    return make_splits(
        source,
        val_fraction=float(d["val_fraction"]),
        test_fraction=float(d["test_fraction"]),
        seed=int(d["split_seed"]),
        max_train_per_class=d.get("max_train_per_class"),
        max_test_per_class=d.get("max_test_per_class"),
        skip_bad=bool(d.get("skip_bad")),
    )
