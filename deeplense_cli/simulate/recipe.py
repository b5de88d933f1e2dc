"""The published recipe: each model's instrument, the random draws of one image, the noise step.

An SIE main halo with external shear lenses an elliptical Sersic source, plus either nothing
(``no_sub``), point-mass subhalos (``cdm``) or a straight vortex of equal point masses
(``axion``). The physical constants behind it live in :mod:`deeplense_cli.data.physics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import KNOWN_CLASSES, KNOWN_DATASETS
from deeplense_cli.data.physics import VORTEX_MASS, axion_vortex_half_length, einstein_radius

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


@dataclass(frozen=True)
class ModelSpec:
    """Instrument and numerics of one dataset model."""

    name: str
    num_pix: int
    pixel_scale: float  # arcsec / pixel
    noisy: bool  # Model_I: Poisson counts; Model_II/III: saved as model + model
    multi_plane: bool  # lens/source redshift lists -> lenstronomy rescales deflections


MODEL_SPECS = {
    "Model_I": ModelSpec("Model_I", 150, 0.05, noisy=True, multi_plane=False),
    "Model_II": ModelSpec("Model_II", 64, 0.101, noisy=False, multi_plane=True),
    "Model_III": ModelSpec("Model_III", 64, 0.08, noisy=False, multi_plane=True),
}
MODEL_I_PSF = {"psf_type": "GAUSSIAN", "fwhm": 0.087, "pixel_size": 0.05, "truncation": 3}


def model_spec(model: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``model``; unknown names raise DeepLenseError."""
    try:
        return MODEL_SPECS[model]
    except KeyError:
        raise DeepLenseError(
            f"unknown model {model!r}; choose one of: {', '.join(KNOWN_DATASETS)}"
        ) from None


def check_class(cls: str) -> str:
    """``cls`` if it is one of the datasets' classes; otherwise DeepLenseError."""
    if cls not in KNOWN_CLASSES:
        raise DeepLenseError(f"unknown class {cls!r}; choose from: {', '.join(KNOWN_CLASSES)}")
    return cls


@dataclass
class LensParams:
    """The random draws behind one image."""

    source_x: float
    source_y: float
    sub_mass: np.ndarray = field(default_factory=lambda: np.zeros(0))  # Msun, per point mass
    sub_x: np.ndarray = field(default_factory=lambda: np.zeros(0))  # arcsec
    sub_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    axion_mass: float = math.nan  # eV (axion class only)
    exposure_time: float = math.nan  # s (Model_I only)

    @property
    def sub_theta_E(self) -> np.ndarray:
        return einstein_radius(self.sub_mass)


def draw_params(model: str, cls: str, rng: np.random.Generator) -> LensParams:
    """Draw the random parameters of one image of ``model`` / ``cls`` from ``rng``."""
    spec = model_spec(model)
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
    if spec.noisy:
        params.exposure_time = float(10 ** rng.uniform(*MODEL_I_LOG10_EXPOSURE))
    return params


def finish_image(
    model: str, noiseless: np.ndarray, params: LensParams, rng: np.random.Generator
) -> np.ndarray:
    """Turn a noiseless model image into the saved image, as the original code did.

    Model_I: Gaussian (Poisson-approximation) noise sqrt(|model|/t) plus background noise, times
    the exposure time t, then Poisson counts (integer values, stored as float64).
    Model_II/III: model + model.

    The two independent Gaussian terms are drawn as one Gaussian with the summed variance:
    t (m + N(0, |m|/t) + N(0, rms^2)) has exactly the distribution of t m + N(0, t|m| + (t rms)^2).
    """
    if not model_spec(model).noisy:
        return noiseless + noiseless
    t = params.exposure_time
    expected = np.abs(noiseless)
    expected *= t
    expected += (t * MODEL_I_BACKGROUND_RMS) ** 2
    np.sqrt(expected, out=expected)
    expected *= rng.standard_normal(noiseless.shape)
    expected += t * noiseless
    np.maximum(expected, 0.0, out=expected)
    return rng.poisson(expected).astype(np.float64)
