"""Images/s of the straightforward lenstronomy simulator vs deeplense's fast simulator.

Baseline: ``deeplense_cli.simulate.ReferenceSimulator`` -- the straightforward lenstronomy
implementation of the published recipe: the image model is built once per class and
``image()`` is called per image (Model_II/III through ``SimAPI`` with ``magnitude2amplitude``
per image, Model_I through ``ImageModel``); Model_I noise with lenstronomy's
``image_util.add_poisson`` / ``add_background`` and ``np.random.poisson`` as in the original
scripts. Ours: ``FastSimulator`` + ``finish_image`` (seeded Generator noise, the same
distribution). Both render the same parameter draws; the table reports the largest relative
difference of the noiseless images, which must be ~1e-15.

Single process, measured side by side in one run (baseline and ours alternate in rounds so
a busy machine slows both alike). Writing files is not included in the table.

    OMP_NUM_THREADS=1 python benchmarks/bench_simulate.py --n 100
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from deeplense_cli import simulate as S
from deeplense_cli.core.cpu import cpu_model
from deeplense_cli.data import KNOWN_CLASSES
from deeplense_cli.simulate.dataset import _save_sample

FULL_MODEL_II = 3 * 30000 + 3 * 5000


def run_engine(
    render, finish, model: str, cls: str, indices: range
) -> tuple[float, list[np.ndarray]]:
    """Seconds to make the images at ``indices`` (draws + render + noise), and the noiseless images."""
    noiseless = []
    t0 = time.perf_counter()
    for i in indices:
        rng = S.image_rng(0, model, "train", cls, i)
        params = S.draw_params(model, cls, rng)
        image = render(params)
        finish(image, params, rng)
        noiseless.append(image)
    return time.perf_counter() - t0, noiseless


def bench_model(model: str, n: int, rounds: int) -> list[dict[str, object]]:
    fast = S.FastSimulator(model)
    fast.render(S.draw_params(model, "axion", np.random.default_rng(0)))  # compile numba
    rows = []
    for cls in KNOWN_CLASSES:
        ref = S.ReferenceSimulator(model, cls)
        t_ref = t_fast = 0.0
        worst = 0.0
        per_round = max(1, n // rounds)
        for r in range(rounds):
            idx = range(r * per_round, (r + 1) * per_round)
            dt, imgs_ref = run_engine(
                ref.render, lambda m, p, _, ref=ref: ref.add_noise(m, p), model, cls, idx
            )
            t_ref += dt
            dt, imgs_fast = run_engine(
                fast.render, lambda m, p, g: S.finish_image(model, m, p, g), model, cls, idx
            )
            t_fast += dt
            for a, b in zip(imgs_ref, imgs_fast, strict=True):
                worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(a))))
        count = per_round * rounds
        rows.append(
            {
                "model": model,
                "class": cls,
                "n": count,
                "t_ref": t_ref,
                "t_fast": t_fast,
                "diff": worst,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100, help="images per class and engine (default 100)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--models", default="Model_II,Model_I,Model_III")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    load_before = os.getloadavg()
    all_rows = []
    for model in models:
        all_rows.extend(bench_model(model, args.n, args.rounds))
    load_after = os.getloadavg()

    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; single process, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {load_before[0]:.2f} -> "
        f"{load_after[0]:.2f} (shared machine)"
    )
    print()
    print("| model | class | images | baseline img/s | ours img/s | speed-up | max rel. diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    overall = {}
    for row in all_rows:
        n = row["n"]
        print(
            f"| {row['model']} | {row['class']} | {n} | {n / row['t_ref']:.1f} | "
            f"{n / row['t_fast']:.1f} | {row['t_ref'] / row['t_fast']:.1f}x | {row['diff']:.1e} |"
        )
        o = overall.setdefault(row["model"], [0, 0.0, 0.0])
        o[0] += n
        o[1] += row["t_ref"]
        o[2] += row["t_fast"]
    for model, (n, t_ref, t_fast) in overall.items():
        print(
            f"| **{model}** | **all** | {n} | {n / t_ref:.1f} | {n / t_fast:.1f} | "
            f"**{t_ref / t_fast:.1f}x** | |"
        )
    if "Model_II" in overall:
        n, t_ref, t_fast = overall["Model_II"]
        write_s = file_write_seconds("Model_II", 200)
        print()
        for label, t in (("baseline", t_ref), ("ours", t_fast)):
            compute = FULL_MODEL_II * (t / n) / 2
            total = FULL_MODEL_II * (t / n + write_s) / 2
            print(
                f"Full Model_II ({FULL_MODEL_II:,} images) on 2 workers, {label}: "
                f"~{compute / 60:.1f} min of simulation, ~{total / 60:.1f} min with file "
                f"writing ({write_s * 1e3:.2f} ms/file measured here); assumes 2 free cores"
            )


def file_write_seconds(model: str, n: int) -> float:
    """Seconds per dataset file written (atomic temp file + rename) on this disk."""
    import tempfile
    from pathlib import Path

    image = S.simulate_images(model, "cdm", 1, seed=0)[0][0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i in range(n):
            _save_sample(Path(tmp) / f"cdm_sim_{i}.npy", image, float("nan"))
        return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    main()
