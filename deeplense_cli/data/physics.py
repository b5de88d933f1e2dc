"""Physical facts of the DeepLense datasets: redshifts, cosmologies, masses and two formulas.

The simulator builds images from these and the metrics bin axion images by vortex length with
them, so both import them from here. NumPy only at import; astropy is loaded on first use.
"""

from __future__ import annotations

from functools import cache

import numpy as np

Z_LENS = 0.5
Z_SOURCE = 1.0
MAIN_HALO_MASS = 1e12  # Msun
VORTEX_MASS = 3e10  # Msun, the whole vortex of an axion image
# Cosmology of the Einstein-radius formula (luminosity distances, D_ls = D_s - D_l).
EINSTEIN_COSMOLOGY = {"H0": 70.0, "Om0": 0.3, "Ob0": 0.05}
RAD_TO_ARCSEC = 206265.0  # the value the original code used
# Cosmology of lenstronomy's multi-plane rescaling in Model_II/III (pyHalo's default).
LENSING_COSMOLOGY = {"H0": 69.7, "Om0": 0.2814, "Ob0": 0.0464}
Z_SOURCE_CONVENTION = 2.5


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
