"""The published recipe: each model's instrument, the random draws of one image, the noise step.

An SIE main halo with external shear lenses an elliptical Sersic source, plus either nothing
(``no_sub``), point-mass subhalos (``cdm``) or a straight vortex of equal point masses
(``axion``). The physical constants behind it live in :mod:`deeplense_cli.data.physics`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError, did_you_mean
from deeplense_cli.data import KNOWN_CLASSES, KNOWN_DATASETS
from deeplense_cli.data.physics import (
    MAIN_HALO_MASS,
    VORTEX_MASS,
    axion_vortex_half_length,
    einstein_radius,
)

MAIN_LENS_E1, MAIN_LENS_E2 = 0.1, 0.0
SHEAR_GAMMA1, SHEAR_GAMMA2 = 0.05, 0.0

SOURCE_SHAPE = {"R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1}
SOURCE_CENTER_MAX = 0.35  # arcsec, uniform in [-max, max] on each axis
SOURCE_AMP = 20.0  # Model_I
SOURCE_MAGNITUDE = 20.0  # Model_II / Model_III

N_SUBHALOS = 25
SUBHALO_MASS_RANGE = (1e6, 1e10)  # Msun
SUBHALO_MASS_SLOPE = -0.9  # p(m) ~ m^slope
SUBHALO_RADIUS_RANGE = (0.25, 2.0)  # arcsec

VORTEX_POINTS = 100
AXION_LOG10_MASS_RANGE = (-24.0, -22.0)  # eV

MODEL_I_BACKGROUND_RMS = 0.01
MODEL_I_LOG10_EXPOSURE = (3.0, 3.5)
MODEL_I_PSF_TRUNCATION = 3

# Lens light (not in the published recipes): an elliptical de Vaucouleurs profile of the main
# lens galaxy at the lens centre, aligned with the SIE; its amplitude is this fraction of the
# source's, which makes the galaxy's centre about 1.5-2 times as bright as the arcs' peak.
LENS_LIGHT_SHAPE = {"R_sersic": 0.5, "n_sersic": 4.0, "e1": MAIN_LENS_E1, "e2": MAIN_LENS_E2}
LENS_LIGHT_AMP_RATIO = 0.3


@dataclass(frozen=True)
class ModelSpec:
    """Instrument and numerics of one dataset model."""

    name: str
    num_pix: int
    pixel_scale: float  # arcsec / pixel
    psf_fwhm: float  # arcsec, Gaussian (Model_II/III: the lenstronomy preset's seeing)
    noisy: bool  # Model_I: Poisson counts; Model_II/III: saved as model + model
    multi_plane: bool  # lens/source redshift lists -> lenstronomy rescales deflections


MODEL_SPECS = {
    "Model_I": ModelSpec("Model_I", 150, 0.05, 0.087, noisy=True, multi_plane=False),
    "Model_II": ModelSpec("Model_II", 64, 0.101, 0.16, noisy=False, multi_plane=True),
    "Model_III": ModelSpec("Model_III", 64, 0.08, 0.08, noisy=False, multi_plane=True),
}


def model_spec(model: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``; unknown names raise DeepLenseError."""
    try:
        return MODEL_SPECS[model]
    except KeyError:
        raise DeepLenseError(
            f"unknown model {model!r}{did_you_mean(model, KNOWN_DATASETS)}; "
            f"choose one of: {', '.join(KNOWN_DATASETS)}"
        ) from None


def check_class(cls: str) -> str:
    """``cls`` if it is one of the datasets' classes; otherwise DeepLenseError."""
    if cls not in KNOWN_CLASSES:
        raise DeepLenseError(f"unknown class {cls!r}; choose from: {', '.join(KNOWN_CLASSES)}")
    return cls


@dataclass(frozen=True)
class Recipe:
    """What one dataset's images are made with: a model's published settings, or those
    settings with some overridden (``deeplense data simulate --set KEY=VALUE``).

    The random draws and the lensing physics stay the model's; these fields are the knobs.
    """

    model: str
    image_size: int  # image side, pixels
    pixel_scale: float  # arcsec / pixel
    psf_fwhm: float  # arcsec
    # Main-lens theta_E (arcsec, the SIE parameter as the recipe writes it; Model_II/III's
    # multi-plane mode then shrinks every deflection by ~0.63), drawn uniform in [lo, hi].
    einstein_radius: tuple[float, float]
    noise: float  # in units of Model_I's noise: 0 none, 1 Model_I's, 3 three times as much
    lens_light: bool  # add the main lens galaxy's light (LENS_LIGHT_SHAPE)

    @property
    def spec(self) -> ModelSpec:
        return model_spec(self.model)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (the Einstein-radius range as a list)."""
        values = asdict(self)
        values["einstein_radius"] = list(self.einstein_radius)
        return values

    def overrides(self) -> dict[str, Any]:
        """The settings that differ from the model's published recipe, JSON-ready."""
        base = base_recipe(self.model).as_dict()
        return {k: v for k, v in self.as_dict().items() if k != "model" and v != base[k]}


RECIPE_KEYS = tuple(f.name for f in fields(Recipe) if f.name != "model")


@cache
def base_recipe(model: str) -> Recipe:
    """The published recipe of ``model``."""
    spec = model_spec(model)
    theta_e = float(einstein_radius(MAIN_HALO_MASS))
    return Recipe(
        model=spec.name,
        image_size=spec.num_pix,
        pixel_scale=spec.pixel_scale,
        psf_fwhm=spec.psf_fwhm,
        einstein_radius=(theta_e, theta_e),
        noise=1.0 if spec.noisy else 0.0,
        lens_light=False,
    )


def recipe_of(model: str, recipe: Recipe | None) -> Recipe:
    """``recipe`` (which must be one of ``model``'s) or ``model``'s published recipe."""
    if recipe is None:
        return base_recipe(model)
    if recipe.model != model_spec(model).name:
        raise DeepLenseError(f"the recipe is one of {recipe.model}, not of {model}")
    return recipe


@dataclass
class LensParams:
    """The random draws behind one image."""

    source_x: float
    source_y: float
    sub_mass: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Msun, per point mass
    sub_x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # arcsec
    sub_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    axion_mass: float = math.nan  # eV (axion class only)
    exposure_time: float = math.nan  # s (Model_I, or when the recipe adds noise)
    theta_E: float = math.nan  # main lens, arcsec; NaN: the published 1e12 Msun halo

    @property
    def sub_theta_E(self) -> np.ndarray:
        return einstein_radius(self.sub_mass)


def draw_params(
    model: str, cls: str, rng: np.random.Generator, recipe: Recipe | None = None
) -> LensParams:
    """Draw the random parameters of one image of ``model`` / ``cls`` from ``rng``.

    A recipe's extra draws (exposure time for added noise, the Einstein radius) come after the
    published ones, so an image keeps its source position and substructure under overrides.
    """
    spec = model_spec(model)
    recipe = recipe_of(model, recipe)
    check_class(cls)
    sx, sy = rng.uniform(-SOURCE_CENTER_MAX, SOURCE_CENTER_MAX, 2)
    params = LensParams(float(sx), float(sy))
    if cls == "cdm":
        lo, hi = SUBHALO_MASS_RANGE
        p = SUBHALO_MASS_SLOPE + 1.0
        u = rng.uniform(0.0, 1.0, N_SUBHALOS)
        params.sub_mass = (lo**p + (hi**p - lo**p) * u) ** (1.0 / p)
        r = rng.uniform(*SUBHALO_RADIUS_RANGE, N_SUBHALOS)
        th = rng.uniform(0.0, 2 * np.pi, N_SUBHALOS)
        params.sub_x, params.sub_y = r * np.sin(th), r * np.cos(th)
    elif cls == "axion":
        params.axion_mass = float(10 ** rng.uniform(*AXION_LOG10_MASS_RANGE))
        half = axion_vortex_half_length(params.axion_mass)
        coords = np.linspace(-half, half, VORTEX_POINTS)
        angle = 2 * np.pi * rng.random()
        params.sub_mass = np.full(VORTEX_POINTS, VORTEX_MASS / VORTEX_POINTS)
        params.sub_x, params.sub_y = coords * np.cos(angle), coords * np.sin(angle)
    if spec.noisy or recipe.noise > 0:
        params.exposure_time = float(10 ** rng.uniform(*MODEL_I_LOG10_EXPOSURE))
    lo, hi = recipe.einstein_radius
    params.theta_E = lo if lo == hi else float(rng.uniform(lo, hi))
    return params


def finish_image(
    model: str,
    noiseless: np.ndarray,
    params: LensParams,
    rng: np.random.Generator,
    recipe: Recipe | None = None,
    flux_unit: float = 1.0,
) -> np.ndarray:
    """Turn a noiseless model image into the saved image, as the original code did.

    Model_I: Gaussian (Poisson-approximation) noise sqrt(|model|/t) plus background noise, times
    the exposure time t, then Poisson counts (integer values, stored as float64).
    Model_II/III: model + model.

    A recipe's ``noise`` k scales the noise: ``clean + k (noisy - clean)`` with Model_I's noise
    process. Model_II/III images get it in Model_I's surface-brightness units (``flux_unit``:
    this model's value of Model_I's unit, the ratio of the source amplitudes), then doubled.
    """
    recipe = recipe_of(model, recipe)
    k = recipe.noise
    if not model_spec(model).noisy:
        if k == 0:
            return noiseless + noiseless
        clean = noiseless / flux_unit
        counts = _poisson_counts(clean, params.exposure_time, rng)
        counts /= params.exposure_time
        counts -= clean
        counts *= k
        counts += clean
        counts *= 2 * flux_unit
        return counts
    counts = _poisson_counts(noiseless, params.exposure_time, rng)
    if k == 1:
        return counts
    expected = params.exposure_time * noiseless
    return expected + k * (counts - expected)


def _poisson_counts(noiseless: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    # The two independent Gaussian terms are drawn as one Gaussian with the summed variance:
    # t (m + N(0, |m|/t) + N(0, rms^2)) has exactly the distribution of t m + N(0, t|m| + (t rms)^2).
    expected = np.abs(noiseless)
    expected *= t
    expected += (t * MODEL_I_BACKGROUND_RMS) ** 2
    np.sqrt(expected, out=expected)
    expected *= rng.standard_normal(noiseless.shape)
    expected += t * noiseless
    np.maximum(expected, 0.0, out=expected)
    return rng.poisson(expected).astype(np.float64)
