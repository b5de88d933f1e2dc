"""Simulate DeepLense Model_I / Model_II / Model_III lensing images with lenstronomy.

* :mod:`~deeplense_cli.simulate.recipe` -- the published recipe: models, draws, noise
* :mod:`~deeplense_cli.simulate.overrides` -- recipe overrides (``--set KEY=VALUE``)
* :mod:`~deeplense_cli.simulate.render` -- lenstronomy set-up, reference and fast simulators
* :mod:`~deeplense_cli.simulate.kernels` -- the fast simulator's numba kernels
* :mod:`~deeplense_cli.simulate.streams` -- per-image random streams and file names
* :mod:`~deeplense_cli.simulate.dataset` -- the released on-disk layout, workers, resuming

May import ``core`` and ``data`` (names, physics, safe readers); nothing above it. The
submodules load on the first use of a name they hold, and lenstronomy, astropy, numba and scipy
on the first simulation, so importing this package is cheap.
"""

from typing import TYPE_CHECKING

from deeplense_cli.core.lazy import exports

# Images per class a simulated dataset has unless told otherwise (`deeplense data simulate`,
# api.simulate). Here, light, so that the command line offers them without the simulator.
TRAIN_PER_CLASS = 30000
TEST_PER_CLASS = 5000

if TYPE_CHECKING:
    from deeplense_cli.simulate.dataset import (
        check_records,
        check_request,
        load_sample,
        parse_classes,
        read_record,
        simulate_dataset,
        split_dir,
    )
    from deeplense_cli.simulate.overrides import (
        KEY_HELP,
        format_overrides,
        known_keys,
        parse_assignments,
        resolve_recipe,
    )
    from deeplense_cli.simulate.recipe import (
        N_SUBHALOS,
        RECIPE_KEYS,
        VORTEX_POINTS,
        LensParams,
        Recipe,
        base_recipe,
        draw_params,
        finish_image,
        model_spec,
    )
    from deeplense_cli.simulate.render import FastSimulator, ReferenceSimulator, fast_simulator
    from deeplense_cli.simulate.streams import SPLITS, file_name, image_rng, simulate_images

# Imported on first use: the recipe and the simulators load NumPy, and `deeplense data simulate
# --help` reads only the override keys (simulate.overrides, the standard library).
__getattr__ = exports(
    __name__,
    {
        **{
            n: f"dataset:{n}"
            for n in (
                "check_records",
                "check_request",
                "load_sample",
                "parse_classes",
                "read_record",
                "simulate_dataset",
                "split_dir",
            )
        },
        **{
            n: f"overrides:{n}"
            for n in (
                "KEY_HELP",
                "format_overrides",
                "known_keys",
                "parse_assignments",
                "resolve_recipe",
            )
        },
        **{
            n: f"recipe:{n}"
            for n in (
                "N_SUBHALOS",
                "RECIPE_KEYS",
                "VORTEX_POINTS",
                "LensParams",
                "Recipe",
                "base_recipe",
                "draw_params",
                "finish_image",
                "model_spec",
            )
        },
        **{n: f"render:{n}" for n in ("FastSimulator", "ReferenceSimulator", "fast_simulator")},
        **{n: f"streams:{n}" for n in ("SPLITS", "file_name", "image_rng", "simulate_images")},
    },
)

__all__ = [
    "KEY_HELP",
    "N_SUBHALOS",
    "RECIPE_KEYS",
    "SPLITS",
    "TEST_PER_CLASS",
    "TRAIN_PER_CLASS",
    "VORTEX_POINTS",
    "FastSimulator",
    "LensParams",
    "Recipe",
    "ReferenceSimulator",
    "base_recipe",
    "check_records",
    "check_request",
    "draw_params",
    "fast_simulator",
    "file_name",
    "finish_image",
    "format_overrides",
    "image_rng",
    "known_keys",
    "load_sample",
    "model_spec",
    "parse_assignments",
    "parse_classes",
    "read_record",
    "resolve_recipe",
    "simulate_dataset",
    "simulate_images",
    "split_dir",
]
