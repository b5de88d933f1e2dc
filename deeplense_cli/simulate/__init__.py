"""Simulate DeepLense Model_I / Model_II / Model_III lensing images with lenstronomy.

The recipe is the published one behind the released datasets (see the simulation facts):
an SIE main halo of 1e12 Msun with external shear lensing an elliptical Sersic source, plus
either nothing (``no_sub``), 25 point-mass subhalos (``cdm``) or a straight "vortex" of 100
equal point masses (``axion``).

Two renderers share one set of random draws (:func:`draw_params`):

* :class:`ReferenceSimulator` is the straightforward lenstronomy implementation (an image
  model built once per class, ``image()`` called per image). It is the fidelity oracle.
* :class:`FastSimulator` gives the same images (~1e-14 relative) many times faster: the
  main lens never changes, so lenstronomy's SIE + shear ray-shooting is done once; per image
  numba kernels add the point masses' deflections (with the rescaling lenstronomy's
  multi-plane mode applies for Model_II/III) and evaluate lenstronomy's SERSIC_ELLIPSE
  formula and Gaussian PSF convolution operation by operation.

Every image depends only on (seed, model, split, class, index), through a NumPy
``SeedSequence`` keyed by those values, so parallel workers, resuming and determinism need no
coordination. :func:`simulate_dataset` writes the released on-disk layout.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from deeplense_cli.core.errors import DeepLenseError

MODELS = ("Model_I", "Model_II", "Model_III")
CLASSES = ("axion", "cdm", "no_sub")
SPLITS = ("train", "test")

# --- the published recipe -------------------------------------------------------------
Z_LENS = 0.5
Z_SOURCE = 1.0
MAIN_HALO_MASS = 1e12  # Msun
MAIN_LENS_E1, MAIN_LENS_E2 = 0.1, 0.0
SHEAR_GAMMA1, SHEAR_GAMMA2 = 0.05, 0.0
# Cosmology of the Einstein-radius formula (luminosity distances, D_ls = D_s - D_l).
EINSTEIN_COSMOLOGY = {"H0": 70.0, "Om0": 0.3, "Ob0": 0.05}
RAD_TO_ARCSEC = 206265.0  # the value the original code used
# Cosmology of lenstronomy's multi-plane rescaling in Model_II/III (pyHalo's default).
LENSING_COSMOLOGY = {"H0": 69.7, "Om0": 0.2814, "Ob0": 0.0464}
Z_SOURCE_CONVENTION = 2.5

SOURCE_SHAPE = {"R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1}
SOURCE_CENTER_MAX = 0.35  # arcsec, uniform in [-max, max] on each axis
SOURCE_AMP = 20.0  # Model_I
SOURCE_MAGNITUDE = 20.0  # Model_II / Model_III

N_SUBHALOS = 25
SUBHALO_MASS_RANGE = (1e6, 1e10)  # Msun
SUBHALO_MASS_SLOPE = -0.9  # p(m) ~ m^slope
SUBHALO_RADIUS_RANGE = (0.25, 2.0)  # arcsec

VORTEX_MASS = 3e10  # Msun
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
            f"unknown model {model!r}; choose one of: {', '.join(MODELS)}"
        ) from None


def _check_class(cls: str) -> str:
    if cls not in CLASSES:
        raise DeepLenseError(f"unknown class {cls!r}; choose from: {', '.join(CLASSES)}")
    return cls


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DeepLenseError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split


# --- physics helpers --------------------------------------------------------------------
@cache
def _einstein_factor() -> float:
    """4 G Msun / c^2 * D_ls / (D_l D_s) (dimensionless, per solar mass)."""
    from astropy import units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(**EINSTEIN_COSMOLOGY)
    d_l = cosmo.luminosity_distance(Z_LENS).to(u.m)
    d_s = cosmo.luminosity_distance(Z_SOURCE).to(u.m)
    factor = 4 * G * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)
    return float(factor.to(u.dimensionless_unscaled).value)


def einstein_radius(mass: float | np.ndarray) -> np.ndarray:
    """Point-mass Einstein radius in arcsec of ``mass`` (Msun) for z_l 0.5, z_s 1.0."""
    return np.sqrt(_einstein_factor() * np.asarray(mass, dtype=float)) * RAD_TO_ARCSEC


def axion_vortex_half_length(axion_mass: float) -> float:
    """Half length L (arcsec) of the vortex for an axion mass in eV: 0.03e-22 / m_a."""
    return 0.06 / (2.0 * axion_mass) * 1e-22


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
    _check_class(cls)
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


# --- lenstronomy set-up -------------------------------------------------------------------
def _main_lens_kwargs() -> list[dict[str, float]]:
    theta_e = float(einstein_radius(MAIN_HALO_MASS))
    return [
        {
            "theta_E": theta_e,
            "e1": MAIN_LENS_E1,
            "e2": MAIN_LENS_E2,
            "center_x": 0.0,
            "center_y": 0.0,
        },
        {"gamma1": SHEAR_GAMMA1, "gamma2": SHEAR_GAMMA2},
    ]


def _lens_kwargs(params: LensParams) -> list[dict[str, float]]:
    kwargs = _main_lens_kwargs()
    for te, x, y in zip(params.sub_theta_E, params.sub_x, params.sub_y, strict=True):
        kwargs.append({"theta_E": float(te), "center_x": float(x), "center_y": float(y)})
    return kwargs


def _source_kwargs(params: LensParams, brightness: dict[str, float]) -> list[dict[str, float]]:
    return [
        {**brightness, **SOURCE_SHAPE, "center_x": params.source_x, "center_y": params.source_y}
    ]


def _n_point_masses(cls: str) -> int:
    return {"no_sub": 0, "cdm": N_SUBHALOS, "axion": VORTEX_POINTS}[_check_class(cls)]


def _single_band(model: str) -> dict[str, Any]:
    if model == "Model_II":
        from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

        return dict(Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band())
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST

    return dict(HST(band="WFC3_F160W", psf_type="GAUSSIAN").kwargs_single_band())


@contextlib.contextmanager
def _quiet_cosmology_warning() -> Iterator[None]:
    # lenstronomy warns whenever an astropy cosmology is passed in; passing one is the recipe.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cosmology is provided")
        yield


def _build_image_model(model: str, n_point_masses: int) -> tuple[Any, Any]:
    """(lenstronomy ImageModel, SimAPI or None) for the recipe with ``n_point_masses``."""
    spec = model_spec(model)
    lens_models = ["SIE", "SHEAR"] + ["POINT_MASS"] * n_point_masses
    if not spec.multi_plane:
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.Util import util

        _, _, ra0, dec0, _, _, pix2angle, _ = util.make_grid_with_coordtransform(
            num_pix=spec.num_pix,
            delta_pix=spec.pixel_scale,
            center_ra=0,
            center_dec=0,
            subgrid_res=1,
            inverse=False,
        )
        data = ImageData(
            image_data=np.zeros((spec.num_pix, spec.num_pix)),
            background_rms=MODEL_I_BACKGROUND_RMS,
            exposure_time=10 ** MODEL_I_LOG10_EXPOSURE[0],
            ra_at_xy_0=ra0,
            dec_at_xy_0=dec0,
            transform_pix2angle=pix2angle,
        )
        image_model = ImageModel(
            data,
            PSF(**MODEL_I_PSF),
            lens_model_class=LensModel(lens_models),
            source_model_class=LightModel(["SERSIC_ELLIPSE"]),
            kwargs_numerics={"supersampling_factor": 1, "supersampling_convolution": False},
        )
        return image_model, None

    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    kwargs_model = {
        "lens_model_list": lens_models,
        "lens_redshift_list": [Z_LENS] * len(lens_models),
        "source_light_model_list": ["SERSIC_ELLIPSE"],
        "source_redshift_list": [Z_SOURCE],
        "cosmo": FlatLambdaCDM(**LENSING_COSMOLOGY),
        "z_source_convention": Z_SOURCE_CONVENTION,
        "z_source": Z_SOURCE,
    }
    with _quiet_cosmology_warning():
        sim = SimAPI(
            num_pix=spec.num_pix, kwargs_single_band=_single_band(model), kwargs_model=kwargs_model
        )
    return sim.image_model_class({"point_source_supersampling_factor": 1}), sim


@dataclass(frozen=True)
class _Kernels:
    lensed_sersic: Callable[..., None]
    gauss_nearest: Callable[..., None]


@cache
def _kernels() -> _Kernels:
    """numba kernels (numba is a hard dependency of lenstronomy), compiled once per process."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def lensed_sersic(x, y, bx0, by0, scale, te2, cx, cy, sersic, exponent):  # pragma: no cover
        # Source-plane positions: the fixed main-lens mapping minus the scaled point-mass
        # deflections alpha = theta_E^2 (x - x0) / r^2 (r floored at 1e-25 like POINT_MASS).
        n = x.size
        ax = np.zeros(n)
        ay = np.zeros(n)
        for k in range(te2.size):  # masses outside, pixels inside: the pixel loop vectorises
            t = te2[k]
            px = cx[k]
            py = cy[k]
            for j in range(n):
                dx = x[j] - px
                dy = y[j] - py
                w = t / max(dx * dx + dy * dy, 1e-50)
                ax[j] += w * dx
                ay[j] += w * dy
        # lenstronomy's SERSIC_ELLIPSE (product-average radius), operation by operation
        r_sersic, n_sersic, e1, e2, scx, scy, smoothing, max_r_frac = sersic
        norm = np.sqrt(max(abs(1.0 - e1 * e1 - e2 * e2), 0.000001))
        bn = max(1.9992 * n_sersic - 0.3271, 0.00001)
        rs = max(smoothing, max(0.0, r_sersic))
        inv_n = 1.0 / n_sersic
        for j in range(n):
            xs = (bx0[j] - scale * ax[j]) - scx
            ys = (by0[j] - scale * ay[j]) - scy
            xe = ((1.0 - e1) * xs - e2 * ys) / norm
            ye = (-e2 * xs + (1.0 + e1) * ys) / norm
            r_frac = max(smoothing, np.sqrt(xe * xe + ye * ye)) / rs
            # exponent only: NumPy's SIMD exp (the one lenstronomy uses) is applied afterwards
            if r_frac <= max_r_frac:
                # pow(r, 1.0) == r exactly; skipping the call for n = 1 lets the loop vectorise
                powered = r_frac if inv_n == 1.0 else r_frac**inv_n
                exponent[j] = -bn * (powered - 1.0)
            else:
                exponent[j] = -np.inf  # lenstronomy sets the profile to 0 beyond max_R_frac

    @numba.njit(cache=True, nogil=True)
    def gauss_nearest(image, weights, scale, out):  # pragma: no cover
        # scipy.ndimage.gaussian_filter(mode="nearest"): axis 0 then axis 1, edges clamped.
        # Loops are arranged so the innermost one runs over contiguous pixels (vectorises).
        ny, nx = image.shape
        m = weights.size
        r = m // 2
        tmp = np.zeros_like(image)
        for i in range(ny):
            for k in range(m):
                ii = min(max(i + k - r, 0), ny - 1)
                wk = weights[k]
                for j in range(nx):
                    tmp[i, j] += wk * image[ii, j]
        out[:, :] = 0.0
        for i in range(ny):
            for k in range(m):
                wk = weights[k]
                for j in range(r, nx - r):
                    out[i, j] += wk * tmp[i, j + k - r]
            for j in list(range(0, min(r, nx))) + list(range(max(nx - r, r), nx)):
                acc = 0.0
                for k in range(m):
                    acc += weights[k] * tmp[i, min(max(j + k - r, 0), nx - 1)]
                out[i, j] = acc
            for j in range(nx):
                out[i, j] *= scale

    return _Kernels(lensed_sersic, gauss_nearest)


def _gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """The 1-D weights scipy.ndimage.gaussian_filter uses for (sigma, truncate)."""
    from scipy import ndimage

    radius = int(truncate * sigma + 0.5)
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    return ndimage.gaussian_filter1d(delta, sigma, mode="constant", truncate=truncate)[::-1].copy()


class ReferenceSimulator:
    """The straightforward lenstronomy implementation: one image model per class, reused."""

    def __init__(self, model: str, cls: str) -> None:
        self.model, self.cls = model_spec(model).name, _check_class(cls)
        self.image_model, self._sim = _build_image_model(model, _n_point_masses(cls))

    def render(self, params: LensParams) -> np.ndarray:
        """Noiseless model image (before Model_I noise / Model_II-III doubling)."""
        if self._sim is None:
            kwargs_source = _source_kwargs(params, {"amp": SOURCE_AMP})
        else:
            kwargs_mag = _source_kwargs(params, {"magnitude": SOURCE_MAGNITUDE})
            _, kwargs_source, _ = self._sim.magnitude2amplitude(None, kwargs_mag)
        return np.asarray(self.image_model.image(_lens_kwargs(params), kwargs_source))

    def add_noise(self, noiseless: np.ndarray, params: LensParams) -> np.ndarray:
        """The original scripts' noise step, with lenstronomy's helpers.

        Uses NumPy's global random state (as lenstronomy's image_util does), so it is not
        reproducible from a seed; :func:`finish_image` is the seeded equivalent.
        """
        if not model_spec(self.model).noisy:
            return noiseless + noiseless
        from lenstronomy.Util import image_util

        t = params.exposure_time
        poisson = image_util.add_poisson(noiseless, exp_time=t)
        background = image_util.add_background(noiseless, sigma_bkd=MODEL_I_BACKGROUND_RMS)
        counts = np.random.poisson((t * (noiseless + poisson + background)).clip(min=0))
        return np.asarray(counts, dtype=np.float64)

    def simulate(self, rng: np.random.Generator) -> tuple[np.ndarray, LensParams]:
        """Draw parameters from ``rng``, render with lenstronomy, add noise as the original did."""
        params = draw_params(self.model, self.cls, rng)
        return self.add_noise(self.render(params), params), params


class FastSimulator:
    """Same images as :class:`ReferenceSimulator`, with the fixed main lens computed once.

    Everything that does not change between images is taken from lenstronomy objects built
    once: the pixel grid, the SIE + shear source-plane mapping, the deflection rescaling,
    the source amplitude and the PSF. Per image, numba kernels add the point masses, evaluate
    lenstronomy's SERSIC_ELLIPSE formula and apply lenstronomy's Gaussian convolution. The
    constructor checks the kernels against lenstronomy on a probe image.
    """

    def __init__(self, model: str) -> None:
        from lenstronomy.Util import util

        spec = model_spec(model)
        self.model = spec.name
        image_model, sim = _build_image_model(spec.name, 0)
        numerics = image_model.ImageNumerics
        x, y = numerics.coordinates_evaluate
        self._x, self._y = (
            np.ascontiguousarray(x, dtype=float),
            np.ascontiguousarray(y, dtype=float),
        )
        if self._x.size != spec.num_pix**2:
            raise RuntimeError(
                "unexpected lenstronomy grid (supersampling is not part of the recipe)"
            )
        bx, by = image_model.LensModel.ray_shooting(self._x, self._y, _main_lens_kwargs())
        self._beta_main = (
            np.ascontiguousarray(bx, dtype=float),
            np.ascontiguousarray(by, dtype=float),
        )
        # Point-mass deflections enter the source position scaled by this factor: 1 in
        # single-plane mode; lenstronomy's multi-plane rescaling (z_source_convention 2.5)
        # for Model_II/III. Measured with lenstronomy itself on one unit point mass.
        self.deflection_scale = self._measure_deflection_scale(spec.name)
        if sim is None:
            self.amp = SOURCE_AMP
        else:  # the amplitude of a magnitude-20 source does not depend on its centre
            _, kwargs_source, _ = sim.magnitude2amplitude(
                None, _source_kwargs(LensParams(0.0, 0.0), {"magnitude": SOURCE_MAGNITUDE})
            )
            self.amp = float(kwargs_source[0]["amp"])
        profile = image_model.SourceModel.func_list[0]
        if getattr(profile, "_sersic_major_axis", False):
            raise RuntimeError(
                "lenstronomy is configured with sersic_major_axis=True; the recipe is not"
            )
        self._smoothing = float(getattr(profile, "_smoothing", 0.0001))
        self._flux_scaling = float(getattr(image_model.Data, "flux_scaling", 1) or 1)
        psf = image_model.PSF
        pixel = float(image_model.Data.pixel_width)
        sigma = float(util.fwhm2sigma(psf.fwhm)) / pixel
        self._weights = _gaussian_weights(sigma, float(psf.truncation))
        self._pixel_area = pixel**2
        self._kernels = _kernels()
        self._self_check(image_model, sim)

    def _self_check(self, image_model: Any, sim: Any) -> None:
        probe = LensParams(0.05, -0.1)
        ours = self.render(probe)
        if sim is None:
            kwargs_source = _source_kwargs(probe, {"amp": SOURCE_AMP})
        else:
            _, kwargs_source, _ = sim.magnitude2amplitude(
                None, _source_kwargs(probe, {"magnitude": SOURCE_MAGNITUDE})
            )
        theirs = image_model.image(_main_lens_kwargs(), kwargs_source)
        err = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
        if not err < 1e-12:
            raise RuntimeError(f"fast simulator disagrees with lenstronomy (rel. {err:.1e})")

    @staticmethod
    def _measure_deflection_scale(model: str) -> float:
        if not model_spec(model).multi_plane:
            return 1.0
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.LensModel.lens_model import LensModel

        with _quiet_cosmology_warning():
            probe = LensModel(
                ["POINT_MASS"],
                lens_redshift_list=[Z_LENS],
                z_source=Z_SOURCE,
                z_source_convention=Z_SOURCE_CONVENTION,
                multi_plane=True,
                cosmo=FlatLambdaCDM(**LENSING_COSMOLOGY),
            )
        bx, _ = probe.ray_shooting(
            np.array([1.0]), np.array([0.0]), [{"theta_E": 1.0, "center_x": 0.0, "center_y": 0.0}]
        )
        return float(1.0 - bx[0])

    @property
    def shape(self) -> tuple[int, int]:
        n = model_spec(self.model).num_pix
        return n, n

    def render(self, params: LensParams) -> np.ndarray:
        """Noiseless model image (before Model_I noise / Model_II-III doubling)."""
        sersic = np.array(
            [
                SOURCE_SHAPE["R_sersic"],
                SOURCE_SHAPE["n_sersic"],
                SOURCE_SHAPE["e1"],
                SOURCE_SHAPE["e2"],
                params.source_x,
                params.source_y,
                self._smoothing,
                1000.0,  # lenstronomy's max_R_frac
            ]
        )
        flux = np.empty_like(self._x)
        self._kernels.lensed_sersic(
            self._x,
            self._y,
            self._beta_main[0],
            self._beta_main[1],
            self.deflection_scale,
            np.ascontiguousarray(params.sub_theta_E, dtype=float) ** 2,
            np.ascontiguousarray(params.sub_x, dtype=float),
            np.ascontiguousarray(params.sub_y, dtype=float),
            sersic,
            flux,
        )
        np.exp(flux, out=flux)
        flux *= self.amp
        if self._flux_scaling != 1:
            flux *= self._flux_scaling
        image = flux.reshape(self.shape)
        out = np.empty_like(image)
        self._kernels.gauss_nearest(image, self._weights, self._pixel_area, out)
        return out

    def simulate(self, cls: str, rng: np.random.Generator) -> tuple[np.ndarray, LensParams]:
        params = draw_params(self.model, cls, rng)
        return finish_image(self.model, self.render(params), params, rng), params


@cache
def fast_simulator(model: str) -> FastSimulator:
    """One :class:`FastSimulator` per model and process."""
    return FastSimulator(model)


# --- deterministic streams and file names ---------------------------------------------
def _key(
    seed: int, model: str, split: str, cls: str, index: int, purpose: int
) -> np.random.SeedSequence:
    if seed < 0:
        raise DeepLenseError(f"seed must be a non-negative integer, got {seed}")
    spawn_key = (MODELS.index(model), SPLITS.index(split), CLASSES.index(cls), index, purpose)
    return np.random.SeedSequence(seed, spawn_key=spawn_key)


def image_rng(seed: int, model: str, split: str, cls: str, index: int) -> np.random.Generator:
    """The random stream of one image: a function of (seed, model, split, class, index) only."""
    return np.random.Generator(np.random.PCG64(_key(seed, model, split, cls, index, 0)))


def file_name(seed: int, model: str, split: str, cls: str, index: int) -> str:
    """``{cls}_sim_<128-bit integer>.npy``, the integer derived from the image's key."""
    hi, lo = _key(seed, model, split, cls, index, 1).generate_state(2, dtype=np.uint64)
    return f"{cls}_sim_{(int(hi) << 64) | int(lo)}.npy"


def split_dir(out: Path, model: str, split: str) -> Path:
    """``OUT/Model_X`` for train, ``OUT/Model_X_test`` for test (the released layout)."""
    return Path(out) / (model if split == "train" else f"{model}_test")


def simulate_images(
    model: str, cls: str, n: int, seed: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images 0..n-1 of (model, class, split, seed), exactly as :func:`simulate_dataset` saves them.

    Returns (images (n, H, W) float64, axion masses (n,) in eV, NaN for other classes).
    """
    spec = model_spec(model)
    _check_class(cls)
    _check_split(split)
    if n < 0:
        raise DeepLenseError(f"number of images must be >= 0, got {n}")
    sim = fast_simulator(spec.name)
    images = np.empty((n, spec.num_pix, spec.num_pix))
    masses = np.full(n, np.nan)
    for i in range(n):
        images[i], params = sim.simulate(cls, image_rng(seed, spec.name, split, cls, i))
        masses[i] = params.axion_mass
    return images, masses


# --- files ------------------------------------------------------------------------------------
def load_sample(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Read one dataset file safely: (image, axion mass or None), keeping its dtype.

    Axion files (a 2-element object array [image, mass]) go through the data package's
    restricted unpickler: no pickled code can run.
    """
    from deeplense_cli.data.readers import read_npy

    return read_npy(path)


def _file_ok(path: Path, cls: str, shape: tuple[int, int]) -> bool:
    try:
        image, mass = load_sample(path)
    except Exception:
        return False
    if image.shape != shape or image.dtype != np.float64:
        return False
    return (mass is not None and math.isfinite(mass)) if cls == "axion" else mass is None


def _save_sample(path: Path, image: np.ndarray, axion_mass: float) -> None:
    if math.isnan(axion_mass):
        arr: np.ndarray = np.ascontiguousarray(image, dtype=np.float64)
    else:
        arr = np.empty(2, dtype=object)
        arr[0] = np.ascontiguousarray(image, dtype=np.float64)
        arr[1] = np.float64(axion_mass)
    # Temp file + os.replace: readers and resumed runs never see half a file. Unlike
    # deeplense_cli.core.atomic there is no fsync per file (it cut throughput ~10x); after a power
    # loss a damaged file fails the load check on the next run and is simply rewritten.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=arr.dtype.hasobject)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class _Chunk:
    model: str
    out: str
    seed: int
    split: str
    cls: str
    start: int
    stop: int


def _run_chunk(chunk: _Chunk) -> tuple[int, int]:
    """Simulate and write the missing files of one chunk: (written, skipped)."""
    n = model_spec(chunk.model).num_pix
    folder = split_dir(Path(chunk.out), chunk.model, chunk.split) / chunk.cls
    written = skipped = 0
    for i in range(chunk.start, chunk.stop):
        path = folder / file_name(chunk.seed, chunk.model, chunk.split, chunk.cls, i)
        if path.exists() and _file_ok(path, chunk.cls, (n, n)):
            skipped += 1
            continue
        sim = fast_simulator(chunk.model)
        image, params = sim.simulate(
            chunk.cls, image_rng(chunk.seed, chunk.model, chunk.split, chunk.cls, i)
        )
        _save_sample(path, image, params.axion_mass)
        written += 1
    return written, skipped


def _init_worker(model: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ctrl-C reaches the whole process group; the parent alone handles it (and terminates us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fast_simulator(model)


def _chunks(
    model: str, out: Path, seed: int, counts: dict[str, int], classes: Sequence[str], size: int
) -> Iterator[_Chunk]:
    for split in SPLITS:
        for cls in classes:
            for start in range(0, counts[split], size):
                stop = min(start + size, counts[split])
                yield _Chunk(model, str(out), seed, split, cls, start, stop)


def parse_classes(classes: str | Iterable[str] | None) -> tuple[str, ...]:
    """None -> all classes; "axion,cdm" or an iterable -> validated tuple in canonical order."""
    if classes is None:
        return CLASSES
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    wanted = {c.strip() for c in items if c.strip()}
    if not wanted:
        raise DeepLenseError(f"no classes given; choose from: {', '.join(CLASSES)}")
    for c in wanted:
        _check_class(c)
    return tuple(c for c in CLASSES if c in wanted)


def check_request(train_per_class: int, test_per_class: int, seed: int, workers: int | None) -> int:
    """Validate dataset sizes, seed and workers; returns the worker count (None -> all cores)."""
    if train_per_class < 0 or test_per_class < 0:
        raise DeepLenseError("image counts per class must be >= 0")
    if seed < 0:
        raise DeepLenseError(f"seed must be a non-negative integer, got {seed}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise DeepLenseError(f"workers must be >= 1, got {workers}")
    return workers


def simulate_dataset(
    model: str,
    out: Path,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
    workers: int | None = None,
    classes: str | Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = 32,
) -> dict[str, Any]:
    """Write ``OUT/Model_X/{class}/*.npy`` and ``OUT/Model_X_test/{class}/*.npy``.

    Existing files that load correctly are kept (re-running resumes); each file is written
    atomically. ``progress(n)`` is called with the number of images finished (written or
    skipped) since the last call. Returns a summary dictionary.
    """
    spec = model_spec(model)
    selected = parse_classes(classes)
    workers = check_request(train_per_class, test_per_class, seed, workers)
    out = Path(out)
    counts = {"train": train_per_class, "test": test_per_class}
    chunks = list(_chunks(spec.name, out, seed, counts, selected, max(1, chunk_size)))
    for split in SPLITS:
        if counts[split]:
            for cls in selected:
                (split_dir(out, spec.name, split) / cls).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = skipped = 0

    def account(result: tuple[int, int]) -> None:
        nonlocal written, skipped
        written += result[0]
        skipped += result[1]
        if progress is not None:
            progress(result[0] + result[1])

    n_workers = min(workers, max(1, len(chunks)))
    if n_workers == 1:
        for chunk in chunks:
            account(_run_chunk(chunk))
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n_workers, initializer=_init_worker, initargs=(spec.name,)) as pool:
            for result in pool.imap_unordered(_run_chunk, chunks):
                account(result)
    seconds = time.perf_counter() - t0
    return {
        "model": spec.name,
        "out": str(out),
        "train_dir": str(split_dir(out, spec.name, "train")),
        "test_dir": str(split_dir(out, spec.name, "test")),
        "classes": list(selected),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        "workers": n_workers,
        "written": written,
        "skipped": skipped,
        "seconds": seconds,
        "images_per_s": written / seconds if seconds > 0 and written else 0.0,
    }
