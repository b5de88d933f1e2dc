"""Datasets: safe readers, a memory-mapped cache, seeded splits, download and inspection.

``from deeplense_cli.data import load_image_set, make_splits, resolve_source, read_image``
is the public API; the sub-modules each hold one concern:

* :mod:`~deeplense_cli.data.readers` -- one file -> image (+ axion mass)
* :mod:`~deeplense_cli.data.safe_pickle` -- axion object arrays without running pickle code
* :mod:`~deeplense_cli.data.imageset` -- a class-per-folder tree and its cache
* :mod:`~deeplense_cli.data.sources` -- dataset and class names, folders
* :mod:`~deeplense_cli.data.physics` -- the datasets' redshifts, masses, lensing formulas
* :mod:`~deeplense_cli.data.splits` -- stratified seeded splits
* :mod:`~deeplense_cli.data.download` -- fetch and unpack the released archives
* :mod:`~deeplense_cli.data.summary` -- summaries and example grids

Imports only ``core``; ``simulate`` and the packages above it build on this one.
"""

from typing import TYPE_CHECKING

from deeplense_cli.core.lazy import exports

# `data show` and Dataset.show: examples per class, and the most a grid holds (the figure stays
# under 6,400 pixels wide). Here, light, so that the command line offers them without NumPy.
EXAMPLES_PER_CLASS = 4
MAX_EXAMPLES_PER_CLASS = 32

if TYPE_CHECKING:
    from deeplense_cli.data.imageset import ImageSet, folder_cache_dir, load_image_set
    from deeplense_cli.data.readers import (
        SUPPORTED_EXTENSIONS,
        BadImageError,
        find_images,
        read_image,
    )
    from deeplense_cli.data.sources import (
        KNOWN_CLASSES,
        KNOWN_DATASETS,
        DataSource,
        resolve_source,
    )
    from deeplense_cli.data.splits import Splits, make_splits

# Imported on first use: the readers, the cache and the splits load NumPy, and `deeplense data
# --help` reads only the dataset and class names (data.sources, the standard library).
__getattr__ = exports(
    __name__,
    {
        **{n: f"imageset:{n}" for n in ("ImageSet", "folder_cache_dir", "load_image_set")},
        **{
            n: f"readers:{n}"
            for n in ("SUPPORTED_EXTENSIONS", "BadImageError", "find_images", "read_image")
        },
        **{
            n: f"sources:{n}"
            for n in ("KNOWN_CLASSES", "KNOWN_DATASETS", "DataSource", "resolve_source")
        },
        **{n: f"splits:{n}" for n in ("Splits", "make_splits")},
    },
)

__all__ = [
    "EXAMPLES_PER_CLASS",
    "KNOWN_CLASSES",
    "KNOWN_DATASETS",
    "MAX_EXAMPLES_PER_CLASS",
    "SUPPORTED_EXTENSIONS",
    "BadImageError",
    "DataSource",
    "ImageSet",
    "Splits",
    "find_images",
    "folder_cache_dir",
    "load_image_set",
    "make_splits",
    "read_image",
    "resolve_source",
]
