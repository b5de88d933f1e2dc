"""numba kernels of the fast simulator: point-mass deflections + lensed Sersic, Gaussian PSF.

They repeat lenstronomy's formulas operation by operation, so the images agree with
lenstronomy's to rounding; :class:`~deeplense_cli.simulate.render.FastSimulator` checks that
on a probe image when it is built. numba and scipy are loaded on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Kernels:
    lensed_sersic: Callable[..., None]
    gauss_nearest: Callable[..., None]


@cache
def kernels() -> Kernels:
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

    return Kernels(lensed_sersic, gauss_nearest)


def gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """The 1-D weights scipy.ndimage.gaussian_filter uses for (sigma, truncate)."""
    from scipy import ndimage

    radius = int(truncate * sigma + 0.5)
    delta = np.zeros(2 * radius + 1)
    delta[radius] = 1.0
    return ndimage.gaussian_filter1d(delta, sigma, mode="constant", truncate=truncate)[::-1].copy()
