"""Two renderers of the recipe that share one set of random draws (:func:`draw_params`).

* :class:`ReferenceSimulator` is the straightforward lenstronomy implementation (an image
  model built once per class, ``image()`` called per image). It is the fidelity oracle.
* :class:`FastSimulator` gives the same images to rounding, faster: the main lens never
  changes, so lenstronomy's SIE + shear ray-shooting is done once; per image numba kernels
  add the point masses' deflections (with the rescaling lenstronomy's multi-plane mode applies
  for Model_II/III) and evaluate lenstronomy's SERSIC_ELLIPSE formula and Gaussian PSF
  convolution operation by operation.

lenstronomy (and astropy) are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np

from deeplense_cli.data.physics import (
    LENSING_COSMOLOGY,
    MAIN_HALO_MASS,
    Z_LENS,
    Z_SOURCE,
    Z_SOURCE_CONVENTION,
    einstein_radius,
)
from deeplense_cli.simulate.kernels import gaussian_weights, kernels
from deeplense_cli.simulate.recipe import (
    LENS_LIGHT_AMP_RATIO,
    LENS_LIGHT_SHAPE,
    MAIN_LENS_E1,
    MAIN_LENS_E2,
    MODEL_I_BACKGROUND_RMS,
    MODEL_I_LOG10_EXPOSURE,
    MODEL_I_PSF_TRUNCATION,
    N_SUBHALOS,
    SHEAR_GAMMA1,
    SHEAR_GAMMA2,
    SOURCE_AMP,
    SOURCE_MAGNITUDE,
    SOURCE_SHAPE,
    VORTEX_POINTS,
    LensParams,
    Recipe,
    check_class,
    draw_params,
    finish_image,
    model_spec,
    recipe_of,
)


def _main_lens_kwargs(theta_e: float = math.nan) -> list[dict[str, float]]:
    if math.isnan(theta_e):
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
    kwargs = _main_lens_kwargs(params.theta_E)
    for te, x, y in zip(params.sub_theta_E, params.sub_x, params.sub_y, strict=True):
        kwargs.append({"theta_E": float(te), "center_x": float(x), "center_y": float(y)})
    return kwargs


def _source_kwargs(params: LensParams, brightness: dict[str, float]) -> list[dict[str, float]]:
    return [
        {**brightness, **SOURCE_SHAPE, "center_x": params.source_x, "center_y": params.source_y}
    ]


def _lens_light_kwargs(source_amp: float) -> list[dict[str, float]]:
    amp = LENS_LIGHT_AMP_RATIO * source_amp
    return [{"amp": amp, **LENS_LIGHT_SHAPE, "center_x": 0.0, "center_y": 0.0}]


def _n_point_masses(cls: str) -> int:
    return {"no_sub": 0, "cdm": N_SUBHALOS, "axion": VORTEX_POINTS}[check_class(cls)]


def single_band_preset(model: str) -> dict[str, Any]:
    """lenstronomy's instrument preset of Model_II (Euclid VIS) or Model_III (HST F160W)."""
    if model == "Model_II":
        from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

        return dict(Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band())
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST

    return dict(HST(band="WFC3_F160W", psf_type="GAUSSIAN").kwargs_single_band())


def _single_band(recipe: Recipe) -> dict[str, Any]:
    # the recipe's pixel scale and PSF stand in for the preset's (equal unless overridden)
    return {
        **single_band_preset(recipe.model),
        "pixel_scale": recipe.pixel_scale,
        "seeing": recipe.psf_fwhm,
    }


@contextlib.contextmanager
def _quiet_cosmology_warning() -> Iterator[None]:
    # lenstronomy warns whenever an astropy cosmology is passed in; passing one is the recipe.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cosmology is provided")
        yield


def _build_image_model(recipe: Recipe, n_point_masses: int) -> tuple[Any, Any]:
    """(lenstronomy ImageModel, SimAPI or None) for the recipe with ``n_point_masses``."""
    spec = recipe.spec
    lens_models = ["SIE", "SHEAR"] + ["POINT_MASS"] * n_point_masses
    lens_light = ["SERSIC_ELLIPSE"] if recipe.lens_light else []
    if not spec.multi_plane:
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.Util import util

        _, _, ra0, dec0, _, _, pix2angle, _ = util.make_grid_with_coordtransform(
            num_pix=recipe.image_size,
            delta_pix=recipe.pixel_scale,
            center_ra=0,
            center_dec=0,
            subgrid_res=1,
            inverse=False,
        )
        data = ImageData(
            image_data=np.zeros((recipe.image_size, recipe.image_size)),
            background_rms=MODEL_I_BACKGROUND_RMS,
            exposure_time=10 ** MODEL_I_LOG10_EXPOSURE[0],
            ra_at_xy_0=ra0,
            dec_at_xy_0=dec0,
            transform_pix2angle=pix2angle,
        )
        psf = PSF(
            psf_type="GAUSSIAN",
            fwhm=recipe.psf_fwhm,
            pixel_size=recipe.pixel_scale,
            truncation=MODEL_I_PSF_TRUNCATION,
        )
        image_model = ImageModel(
            data,
            psf,
            lens_model_class=LensModel(lens_models),
            source_model_class=LightModel(["SERSIC_ELLIPSE"]),
            lens_light_model_class=LightModel(lens_light),
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
        "lens_light_model_list": lens_light,
        "cosmo": FlatLambdaCDM(**LENSING_COSMOLOGY),
        "z_source_convention": Z_SOURCE_CONVENTION,
        "z_source": Z_SOURCE,
    }
    with _quiet_cosmology_warning():
        sim = SimAPI(
            num_pix=recipe.image_size,
            kwargs_single_band=_single_band(recipe),
            kwargs_model=kwargs_model,
        )
    return sim.image_model_class({"point_source_supersampling_factor": 1}), sim


class ReferenceSimulator:
    """The straightforward lenstronomy implementation: one image model per class, reused."""

    def __init__(self, model: str, cls: str, recipe: Recipe | None = None) -> None:
        self.recipe = recipe_of(model, recipe)
        self.model, self.cls = self.recipe.model, check_class(cls)
        self.image_model, self._sim = _build_image_model(self.recipe, _n_point_masses(cls))

    def render(self, params: LensParams) -> np.ndarray:
        """Noiseless model image (before Model_I noise / Model_II-III doubling)."""
        if self._sim is None:
            kwargs_source = _source_kwargs(params, {"amp": SOURCE_AMP})
        else:
            kwargs_mag = _source_kwargs(params, {"magnitude": SOURCE_MAGNITUDE})
            _, kwargs_source, _ = self._sim.magnitude2amplitude(None, kwargs_mag)
        kwargs_lens_light = None
        if self.recipe.lens_light:
            kwargs_lens_light = _lens_light_kwargs(float(kwargs_source[0]["amp"]))
        return np.asarray(
            self.image_model.image(_lens_kwargs(params), kwargs_source, kwargs_lens_light)
        )

    def add_noise(self, noiseless: np.ndarray, params: LensParams) -> np.ndarray:
        """The original scripts' noise step, with lenstronomy's helpers.

        Uses NumPy's global random state (as lenstronomy's image_util does), so it is not
        reproducible from a seed; :func:`finish_image` is the seeded equivalent. Always the
        published noise: recipe overrides of ``noise`` apply to the fast path only.
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
        params = draw_params(self.model, self.cls, rng, self.recipe)
        return self.add_noise(self.render(params), params), params


class FastSimulator:
    """Same images as :class:`ReferenceSimulator`, with the fixed main lens computed once.

    Everything that does not change between images is taken from lenstronomy objects built
    once: the pixel grid, the SIE + shear source-plane mapping, the deflection rescaling,
    the source amplitude, the lens light and the PSF. Per image, numba kernels add the point
    masses, evaluate lenstronomy's SERSIC_ELLIPSE formula and apply lenstronomy's Gaussian
    convolution. The constructor checks the kernels against lenstronomy on a probe image.
    """

    def __init__(self, model: str, recipe: Recipe | None = None) -> None:
        from lenstronomy.Util import util

        self.recipe = recipe_of(model, recipe)
        self.model = self.recipe.model
        image_model, sim = _build_image_model(self.recipe, 0)
        numerics = image_model.ImageNumerics
        x, y = numerics.coordinates_evaluate
        self._x, self._y = (
            np.ascontiguousarray(x, dtype=float),
            np.ascontiguousarray(y, dtype=float),
        )
        if self._x.size != self.recipe.image_size**2:
            raise RuntimeError(
                "unexpected lenstronomy grid (supersampling is not part of the recipe)"
            )
        self._theta_e0 = float(einstein_radius(MAIN_HALO_MASS))
        self._beta_main = self._ray_shoot(image_model, self._theta_e0)
        # SIE deflections are linear in theta_E (shear does not depend on it), so another
        # Einstein radius moves each pixel's source-plane position along a fixed step.
        twice = self._ray_shoot(image_model, 2 * self._theta_e0)
        self._beta_step = (
            (twice[0] - self._beta_main[0]) / self._theta_e0,
            (twice[1] - self._beta_main[1]) / self._theta_e0,
        )
        # Point-mass deflections enter the source position scaled by this factor: 1 in
        # single-plane mode; lenstronomy's multi-plane rescaling (z_source_convention 2.5)
        # for Model_II/III. Measured with lenstronomy itself on one unit point mass.
        self.deflection_scale = self._measure_deflection_scale(self.model)
        if sim is None:
            self.amp = SOURCE_AMP
        else:  # the amplitude of a magnitude-20 source does not depend on its centre
            _, kwargs_source, _ = sim.magnitude2amplitude(
                None, _source_kwargs(LensParams(0.0, 0.0), {"magnitude": SOURCE_MAGNITUDE})
            )
            self.amp = float(kwargs_source[0]["amp"])
        # this model's value of Model_I's surface-brightness unit (for added noise)
        self.flux_unit = self.amp / SOURCE_AMP
        self._lens_light: np.ndarray | None = None
        if self.recipe.lens_light:  # unlensed and the same in every image
            self._lens_light = np.asarray(
                image_model.lens_surface_brightness(_lens_light_kwargs(self.amp)), dtype=float
            )
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
        self._weights = gaussian_weights(sigma, float(psf.truncation))
        self._pixel_area = pixel**2
        self._kernels = kernels()
        self._self_check(image_model, sim)

    def _ray_shoot(self, image_model: Any, theta_e: float) -> tuple[np.ndarray, np.ndarray]:
        bx, by = image_model.LensModel.ray_shooting(self._x, self._y, _main_lens_kwargs(theta_e))
        return np.ascontiguousarray(bx, dtype=float), np.ascontiguousarray(by, dtype=float)

    def _self_check(self, image_model: Any, sim: Any) -> None:
        # at the top of the recipe's Einstein-radius range, to check the linear step too
        probe = LensParams(0.05, -0.1, theta_E=self.recipe.einstein_radius[1])
        ours = self.render(probe)
        if sim is None:
            kwargs_source = _source_kwargs(probe, {"amp": SOURCE_AMP})
        else:
            _, kwargs_source, _ = sim.magnitude2amplitude(
                None, _source_kwargs(probe, {"magnitude": SOURCE_MAGNITUDE})
            )
        kwargs_lens_light = _lens_light_kwargs(self.amp) if self.recipe.lens_light else None
        theirs = image_model.image(
            _main_lens_kwargs(probe.theta_E), kwargs_source, kwargs_lens_light
        )
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
        n = self.recipe.image_size
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
        beta_x, beta_y = self._beta_main
        step = params.theta_E - self._theta_e0
        if step and not math.isnan(step):
            beta_x = beta_x + step * self._beta_step[0]
            beta_y = beta_y + step * self._beta_step[1]
        flux = np.empty_like(self._x)
        self._kernels.lensed_sersic(
            self._x,
            self._y,
            beta_x,
            beta_y,
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
        if self._lens_light is not None:
            out += self._lens_light
        return out

    def simulate(self, cls: str, rng: np.random.Generator) -> tuple[np.ndarray, LensParams]:
        params = draw_params(self.model, cls, rng, self.recipe)
        noiseless = self.render(params)
        return finish_image(self.model, noiseless, params, rng, self.recipe, self.flux_unit), params


def fast_simulator(model: str, recipe: Recipe | None = None) -> FastSimulator:
    """One :class:`FastSimulator` per recipe (``None``: the model's published one) and process."""
    return _fast_simulator(recipe_of(model, recipe))


@cache
def _fast_simulator(recipe: Recipe) -> FastSimulator:
    return FastSimulator(recipe.model, recipe)
