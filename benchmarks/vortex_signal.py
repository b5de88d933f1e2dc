"""How much an axion vortex (per axion mass) and the cdm subhalos change a simulated image.

Renders each draw twice with the fast simulator, with its substructure and without it (the
same lens and source position), and reports the medians over draws of

- ``max|diff| / max``: the largest pixel change over the image's peak, and
- ``sum|diff| / sum``: the flux the substructure moves, over the image's flux.

A light axion's vortex is long (half-length 0.03e-22 / m_a arcsec): its 100 point masses
spread 3e10 Msun over a line wider than the Einstein ring. A heavy axion's vortex sits inside
the ring and acts as one mass at the lens centre. ``deeplense evaluate`` reports the axion
recall per mass bin; this script says how large each bin's signal is (BENCHMARKS.md, "Where
the points are lost").

    python benchmarks/vortex_signal.py --dataset Model_III --draws 40
"""

from __future__ import annotations

import argparse

import numpy as np

from deeplense_cli import simulate as S
from deeplense_cli.data.physics import axion_vortex_half_length

LOG10_MASSES = (-23.9, -23.7, -23.5, -23.25, -23.0, -22.5, -22.1)


def change(fs: S.FastSimulator, params: S.LensParams) -> tuple[float, float]:
    """(max|diff|/max, sum|diff|/sum) of ``params``'s image against its smooth lens."""
    with_sub = fs.render(params)
    smooth = fs.render(S.LensParams(params.source_x, params.source_y))
    diff = np.abs(with_sub - smooth)
    return float(diff.max() / smooth.max()), float(diff.sum() / smooth.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="Model_III", choices=["Model_II", "Model_III"])
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    fs = S.fast_simulator(args.dataset)
    rng = np.random.default_rng(args.seed)
    print(f"{args.dataset}, {args.draws} draws per row (median)\n")
    print('| substructure | vortex half-length L (") | max|diff| / max | sum|diff| / sum |')
    print("| --- | --- | --- | --- |")
    for logm in LOG10_MASSES:
        half = axion_vortex_half_length(10**logm)
        rows = []
        for _ in range(args.draws):
            p = S.draw_params(args.dataset, "axion", rng)
            angle = 2 * np.pi * rng.random()
            along = np.linspace(-half, half, S.VORTEX_POINTS)
            p.sub_x, p.sub_y = along * np.cos(angle), along * np.sin(angle)
            rows.append(change(fs, p))
        peak, flux = np.median(rows, axis=0)
        print(f"| axion, m_a = 10^{logm} eV | {half:.2f} | {peak:.4f} | {flux:.4f} |")
    rows = [change(fs, S.draw_params(args.dataset, "cdm", rng)) for _ in range(args.draws)]
    peak, flux = np.median(rows, axis=0)
    print(f"| cdm, {S.N_SUBHALOS} subhalos | - | {peak:.4f} | {flux:.4f} |")


if __name__ == "__main__":
    main()
