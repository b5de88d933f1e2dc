"""Deterministic random streams and file names: every image is a function of its key alone.

The key is (seed, model, split, class, index), turned into a NumPy ``SeedSequence``, so
parallel workers, resumed runs and reruns agree without any coordination. A recipe with
overrides draws from the same stream (its extra draws come last), so image i of two recipes
shares its source position and substructure, and keeps its file name.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.sources import DATASET_SPLITS, KNOWN_CLASSES, KNOWN_DATASETS
from deeplense_cli.simulate.overrides import resolve_recipe
from deeplense_cli.simulate.recipe import Recipe, check_class, model_spec
from deeplense_cli.simulate.render import fast_simulator

SPLITS = DATASET_SPLITS


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DeepLenseError(f"unknown split {split!r}; choose {' or '.join(map(repr, SPLITS))}")
    return split


def _key(
    seed: int, model: str, split: str, cls: str, index: int, purpose: int
) -> np.random.SeedSequence:
    # Positions in KNOWN_DATASETS, SPLITS and KNOWN_CLASSES are part of the key:
    # reordering any of them changes every simulated image and file name.
    if seed < 0:
        raise DeepLenseError(f"seed must be a non-negative integer, got {seed}")
    spawn_key = (
        KNOWN_DATASETS.index(model),
        SPLITS.index(split),
        KNOWN_CLASSES.index(cls),
        index,
        purpose,
    )
    return np.random.SeedSequence(seed, spawn_key=spawn_key)


def image_rng(seed: int, model: str, split: str, cls: str, index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, model, split, class, index) only."""
    return np.random.Generator(np.random.PCG64(_key(seed, model, split, cls, index, 0)))


def file_name(seed: int, model: str, split: str, cls: str, index: int) -> str:
    """``{cls}_sim_<128-bit integer>.npy``, the integer derived from the image's key."""
    hi, lo = _key(seed, model, split, cls, index, 1).generate_state(2, dtype=np.uint64)
    return f"{cls}_sim_{(int(hi) << 64) | int(lo)}.npy"


def simulate_images(
    model: str,
    cls: str,
    n: int,
    seed: int,
    split: str = "train",
    recipe: Mapping[str, object] | Recipe | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images 0..n-1 of (model, class, split, seed), exactly as ``simulate_dataset`` saves them.

    ``recipe``: overrides of the model's recipe (see ``overrides.KEY_HELP``), as for
    ``simulate_dataset``. Returns (images (n, H, W) float64, axion masses (n,) in eV, NaN for
    other classes).
    """
    spec = model_spec(model)
    resolved = resolve_recipe(spec.name, recipe)
    check_class(cls)
    _check_split(split)
    if n < 0:
        raise DeepLenseError(f"number of images must be >= 0, got {n}")
    sim = fast_simulator(spec.name, resolved)
    size = resolved.image_size
    images = np.empty((n, size, size))
    masses = np.full(n, np.nan)
    for i in range(n):
        images[i], params = sim.simulate(cls, image_rng(seed, spec.name, split, cls, i))
        masses[i] = params.axion_mass
    return images, masses
