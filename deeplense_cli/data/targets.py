"""Regression targets: the axion masses the images carry (``ImageSet.axion_mass``).

A mass-regression run uses only the images that carry a mass (the axion class of the
DeepLense datasets); its target is log10 of the mass in eV.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.imageset import ImageSet
from deeplense_cli.data.splits import Splits


def with_mass(images: ImageSet, idx: np.ndarray) -> np.ndarray:
    """The positions of ``idx`` whose images carry a (positive, finite) axion mass."""
    idx = np.asarray(idx, dtype=np.int64)
    mass = np.asarray(images.axion_mass, dtype=np.float64)[idx]
    return idx[np.isfinite(mass) & (mass > 0)]


def log10_mass(images: ImageSet, idx: np.ndarray) -> np.ndarray:
    """log10 of the axion mass in eV of ``images[idx]`` (NaN where an image has none)."""
    mass = np.asarray(images.axion_mass, dtype=np.float64)[np.asarray(idx, dtype=np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mass > 0, np.log10(np.where(mass > 0, mass, 1.0)), np.nan)


def mass_only(splits: Splits) -> Splits:
    """``splits`` with every split cut down to the images that carry an axion mass; an error
    naming the data when the training folder has none."""
    train_idx = with_mass(splits.train, splits.train_idx)
    if len(train_idx) == 0:
        raise DeepLenseError(
            f"--task axion-mass needs images that carry an axion mass, and none of the "
            f"{len(splits.train_idx)} training images in {splits.train.root} does (the "
            "DeepLense axion files hold [image, mass]; cdm, no_sub and image files hold none)"
        )
    return dataclasses.replace(
        splits,
        train_idx=train_idx,
        val_idx=with_mass(splits.train, splits.val_idx),
        test_idx=with_mass(splits.test, splits.test_idx),
    )
