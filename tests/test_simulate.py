"""The lenstronomy simulator: fidelity to lenstronomy and to real data, statistics, files, CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli import simulate as S
from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data import KNOWN_CLASSES, KNOWN_DATASETS, physics

FILE_RE = re.compile(r"^(axion|cdm|no_sub)_sim_(\d+)\.npy$")


def _real_sample(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy", allow_pickle=False)


# --- physics and fidelity -------------------------------------------------------------
def test_einstein_radius_of_main_halo_matches_published_value() -> None:
    assert float(physics.einstein_radius(1e12)) == pytest.approx(1.2815, abs=1e-4)
    # theta_E scales as sqrt(M): a 1e8 Msun subhalo has 1e-2 of the main halo's radius
    assert float(physics.einstein_radius(1e8)) == pytest.approx(
        float(physics.einstein_radius(1e12)) / 100
    )


@pytest.mark.parametrize("model", ["Model_II", "Model_III"])
def test_multi_plane_deflection_scale_matches_distance_ratios(model: str) -> None:
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(**physics.LENSING_COSMOLOGY)

    def ratio(z_s: float) -> float:
        d_ls = cosmo.angular_diameter_distance(physics.Z_LENS, z_s)
        return float(d_ls / cosmo.angular_diameter_distance(z_s))

    expected = ratio(physics.Z_SOURCE) / ratio(physics.Z_SOURCE_CONVENTION)
    scale = S.fast_simulator(model).deflection_scale
    assert scale == pytest.approx(expected, rel=1e-9)
    assert 0.62 < scale < 0.65  # facts: ~0.634
    assert S.fast_simulator("Model_I").deflection_scale == 1.0


@pytest.mark.parametrize("model", KNOWN_DATASETS)
@pytest.mark.parametrize("cls", KNOWN_CLASSES)
def test_fast_path_equals_straightforward_lenstronomy(model: str, cls: str) -> None:
    reference = S.ReferenceSimulator(model, cls)
    fast = S.fast_simulator(model)
    for index in range(2):
        params = S.draw_params(model, cls, S.image_rng(7, model, "train", cls, index))
        expected = reference.render(params)
        got = fast.render(params)
        assert got.shape == expected.shape == fast.shape
        rel = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
        assert rel < 1e-10, f"{model}/{cls}: relative difference {rel:.1e}"


def test_reference_noise_step_follows_the_original_scripts() -> None:
    np.random.seed(1)  # the original scripts draw noise from the global NumPy state
    ref = S.ReferenceSimulator("Model_I", "no_sub")
    image, params = ref.simulate(np.random.default_rng(1))
    assert image.shape == (150, 150) and np.array_equal(image, np.round(image)) and image.min() >= 0
    model = ref.render(params)
    bright = model * params.exposure_time > 200  # where clipping at zero does not matter
    assert abs(image[bright].sum() / (params.exposure_time * model[bright].sum()) - 1) < 0.02
    ref2 = S.ReferenceSimulator("Model_II", "no_sub")
    doubled, params2 = ref2.simulate(np.random.default_rng(1))
    assert np.array_equal(doubled, 2 * ref2.render(params2))


def test_substructure_changes_the_image() -> None:
    fast = S.fast_simulator("Model_II")
    params = S.draw_params("Model_II", "axion", np.random.default_rng(3))
    smooth = S.LensParams(params.source_x, params.source_y)
    diff = np.max(np.abs(fast.render(params) - fast.render(smooth))) / np.max(fast.render(smooth))
    assert diff > 1e-4


def _fit_source_centre(model: str, target: np.ndarray) -> tuple[np.ndarray, float]:
    from scipy.optimize import least_squares

    sim = S.fast_simulator(model)

    def residual(p: np.ndarray) -> np.ndarray:
        image = sim.render(S.LensParams(float(p[0]), float(p[1])))
        return (image / image.max() - target).ravel()

    fit = least_squares(residual, x0=[0.0, 0.0], xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return fit.x, float(np.sqrt(np.mean(fit.fun**2)))


def test_model_iii_reproduces_real_no_sub_sample(real_samples: Path) -> None:
    real = _real_sample(real_samples, "no_sub")
    assert real.shape == (64, 64)
    centre, rms = _fit_source_centre("Model_III", real)
    assert rms < 1e-10, rms
    assert centre == pytest.approx([-0.0617, 0.0845], abs=5e-4)


def test_model_ii_settings_do_not_fit_the_model_iii_sample(real_samples: Path) -> None:
    # the check above can fail: other instrument settings leave a large residual
    _, rms = _fit_source_centre("Model_II", _real_sample(real_samples, "no_sub"))
    assert rms > 1e-3


def test_axion_sample_fits_better_with_a_vortex(real_samples: Path) -> None:
    from scipy.optimize import least_squares

    real = _real_sample(real_samples, "axion")
    sim = S.fast_simulator("Model_III")
    theta_e = float(physics.einstein_radius(physics.VORTEX_MASS / S.VORTEX_POINTS))

    def image(p: np.ndarray, vortex: bool) -> np.ndarray:
        params = S.LensParams(float(p[0]), float(p[1]))
        if vortex:
            coords = np.linspace(-p[2], p[2], S.VORTEX_POINTS)
            params.sub_mass = np.full(S.VORTEX_POINTS, physics.VORTEX_MASS / S.VORTEX_POINTS)
            params.sub_x, params.sub_y = coords * np.cos(p[3]), coords * np.sin(p[3])
        out = sim.render(params)
        return out / out.max()

    assert theta_e > 0
    _, rms_smooth = _fit_source_centre("Model_III", real)
    best = np.inf
    for length in (0.3, 1.0, 2.0):
        for angle in np.linspace(0, np.pi, 4, endpoint=False):
            fit = least_squares(
                lambda p: (image(p, True) - real).ravel(),
                x0=[0.0, 0.0, length, angle],
                bounds=([-0.35, -0.35, 0.03, -10], [0.35, 0.35, 3.0, 10]),
                max_nfev=60,
            )
            best = min(best, float(np.sqrt(np.mean(fit.fun**2))))
    assert best < 0.8 * rms_smooth, (best, rms_smooth)


# --- draws and statistics ---------------------------------------------------------------
def test_cdm_draws_follow_the_recipe() -> None:
    rng = np.random.default_rng(11)
    draws = [S.draw_params("Model_II", "cdm", rng) for _ in range(400)]
    assert all(d.sub_mass.size == 25 == d.sub_x.size for d in draws)
    masses = np.concatenate([d.sub_mass for d in draws])
    radii = np.concatenate([np.hypot(d.sub_x, d.sub_y) for d in draws])
    assert masses.min() >= 1e6 and masses.max() <= 1e10
    assert radii.min() >= 0.25 and radii.max() <= 2.0
    # p(m) ~ m^-0.9: P(m > 1e9) = (1e10^0.1 - 1e9^0.1) / (1e10^0.1 - 1e6^0.1) ~ 0.299
    expected = (1e10**0.1 - 1e9**0.1) / (1e10**0.1 - 1e6**0.1)
    assert np.mean(masses > 1e9) == pytest.approx(expected, abs=0.02)
    centres = np.array([(d.source_x, d.source_y) for d in draws])
    assert np.abs(centres).max() <= 0.35
    assert np.isnan([d.axion_mass for d in draws]).all()


def test_axion_draws_follow_the_recipe() -> None:
    rng = np.random.default_rng(12)
    draws = [S.draw_params("Model_III", "axion", rng) for _ in range(400)]
    masses = np.array([d.axion_mass for d in draws])
    assert masses.min() >= 1e-24 and masses.max() <= 1e-22
    assert np.mean(np.log10(masses)) == pytest.approx(-23.0, abs=0.1)  # log-uniform
    d = draws[0]
    assert d.sub_mass.size == 100 and d.sub_mass.sum() == pytest.approx(3e10)
    half = physics.axion_vortex_half_length(d.axion_mass)
    ends = np.hypot(d.sub_x[[0, -1]], d.sub_y[[0, -1]])
    assert ends == pytest.approx([half, half])
    # a straight line through the centre
    assert np.abs(d.sub_x * d.sub_y[-1] - d.sub_y * d.sub_x[-1]).max() < 1e-12
    assert physics.axion_vortex_half_length(1e-22) == pytest.approx(0.03)


def test_no_sub_has_no_point_masses_and_model_i_draws_exposures() -> None:
    rng = np.random.default_rng(13)
    assert S.draw_params("Model_II", "no_sub", rng).sub_mass.size == 0
    exposures = [S.draw_params("Model_I", "no_sub", rng).exposure_time for _ in range(200)]
    assert min(exposures) >= 10**3 and max(exposures) <= 10**3.5
    assert np.isnan(S.draw_params("Model_II", "no_sub", rng).exposure_time)


@pytest.mark.parametrize("model", ["Model_II", "Model_III"])
def test_model_ii_iii_images_are_exactly_twice_the_noiseless_model(model: str) -> None:
    images, masses = S.simulate_images(model, "cdm", 3, seed=5)
    assert images.shape == (3, 64, 64) and images.dtype == np.float64
    assert np.isnan(masses).all()
    for i in range(3):
        params = S.draw_params(model, "cdm", S.image_rng(5, model, "train", "cdm", i))
        noiseless = S.fast_simulator(model).render(params)
        assert np.array_equal(images[i], noiseless + noiseless)
        assert images[i].min() > 0 and np.isfinite(images[i]).all()


def test_model_i_images_are_poisson_counts_around_the_model() -> None:
    images, _ = S.simulate_images("Model_I", "no_sub", 4, seed=2)
    assert images.shape == (4, 150, 150) and images.dtype == np.float64
    assert np.array_equal(images, np.round(images)) and images.min() >= 0
    z_all = []
    for i in range(4):
        rng = S.image_rng(2, "Model_I", "train", "no_sub", i)
        params = S.draw_params("Model_I", "no_sub", rng)
        model = S.fast_simulator("Model_I").render(params)
        t = params.exposure_time
        bright = model * t > 200  # clipping at zero is negligible there
        # counts ~ Poisson(t (m + N(0, m/t) + N(0, 0.01^2))): variance 2 t m + (0.01 t)^2
        z = (images[i][bright] - t * model[bright]) / np.sqrt(
            2 * t * model[bright] + (0.01 * t) ** 2
        )
        z_all.append(z)
        assert not np.array_equal(images[i], np.round(t * model))  # noise is there
    z = np.concatenate(z_all)
    assert z.size > 1000
    assert abs(z.mean()) < 0.1 and z.std() == pytest.approx(1.0, abs=0.1)


def test_axion_images_carry_their_masses_and_depend_on_index_only() -> None:
    images, masses = S.simulate_images("Model_III", "axion", 3, seed=4)
    assert ((masses >= 1e-24) & (masses <= 1e-22)).all()
    again, masses_again = S.simulate_images("Model_III", "axion", 2, seed=4)
    assert again.tobytes() == images[:2].tobytes() and np.array_equal(masses[:2], masses_again)
    other, _ = S.simulate_images("Model_III", "axion", 2, seed=5)
    test_split, _ = S.simulate_images("Model_III", "axion", 2, seed=4, split="test")
    assert not np.array_equal(other, images[:2])
    assert not np.array_equal(test_split, images[:2])


def test_file_names_are_deterministic_128_bit_and_distinct() -> None:
    names = {
        S.file_name(0, "Model_II", sp, c, i)
        for sp in S.SPLITS
        for c in KNOWN_CLASSES
        for i in range(50)
    }
    assert len(names) == 300
    name = S.file_name(0, "Model_II", "train", "cdm", 3)
    assert (
        name
        == S.file_name(0, "Model_II", "train", "cdm", 3)
        != S.file_name(1, "Model_II", "train", "cdm", 3)
    )
    match = FILE_RE.match(name)
    assert match and match.group(1) == "cdm" and int(match.group(2)) < 2**128


def test_bad_input_is_a_deeplense_error() -> None:
    with pytest.raises(DeepLenseError, match="Model_I, Model_II, Model_III"):
        S.simulate_images("Model_IV", "cdm", 1, seed=0)
    with pytest.raises(DeepLenseError, match="axion, cdm, no_sub"):
        S.simulate_images("Model_II", "wdm", 1, seed=0)
    with pytest.raises(DeepLenseError, match="seed"):
        S.simulate_images("Model_II", "cdm", 1, seed=-1)
    with pytest.raises(DeepLenseError):
        S.parse_classes("axion,fuzzy")


# --- datasets on disk -------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def test_dataset_layout_contents_and_resume(tmp_path: Path) -> None:
    seen: list[int] = []
    summary = S.simulate_dataset(
        "Model_III", tmp_path, 2, 1, seed=3, workers=1, progress=seen.append
    )
    assert summary["written"] == 9 and summary["skipped"] == 0 and sum(seen) == 9
    for split_dir, n in (("Model_III", 2), ("Model_III_test", 1)):
        for cls in KNOWN_CLASSES:
            files = sorted((tmp_path / split_dir / cls).iterdir())
            assert len(files) == n
            assert all(FILE_RE.match(f.name) and f.name.startswith(cls) for f in files)
    # plain 2-D float64 arrays for cdm / no_sub, identical to simulate_images
    images, _ = S.simulate_images("Model_III", "cdm", 2, seed=3)
    for i in range(2):
        path = tmp_path / "Model_III" / "cdm" / S.file_name(3, "Model_III", "train", "cdm", i)
        arr = np.load(path, allow_pickle=False)
        assert arr.dtype == np.float64 and arr.shape == (64, 64)
        assert np.array_equal(arr, images[i])
    # axion: a 2-element object array [image, mass], as released
    axion_images, axion_masses = S.simulate_images("Model_III", "axion", 1, seed=3, split="test")
    path = tmp_path / "Model_III_test" / "axion" / S.file_name(3, "Model_III", "test", "axion", 0)
    with pytest.raises(ValueError):
        np.load(path, allow_pickle=False)
    image, mass = S.load_sample(path)
    assert np.array_equal(image, axion_images[0]) and mass == axion_masses[0]

    before = _files(tmp_path)
    again = S.simulate_dataset("Model_III", tmp_path, 2, 1, seed=3, workers=1)
    assert again["written"] == 0 and again["skipped"] == 9
    # remove one file and truncate another: exactly those two are rewritten, byte-identical
    victims = [tmp_path / k for k in list(before)[:2]]
    victims[0].unlink()
    victims[1].write_bytes(victims[1].read_bytes()[:100])
    third = S.simulate_dataset("Model_III", tmp_path, 2, 1, seed=3, workers=1)
    assert third["written"] == 2 and third["skipped"] == 7
    assert _files(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_malicious_pickle_is_refused_and_replaced(tmp_path: Path) -> None:
    S.simulate_dataset("Model_II", tmp_path, 1, 0, seed=0, workers=1, classes="axion")
    path = next((tmp_path / "Model_II" / "axion").iterdir())
    good = path.read_bytes()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = Evil(), 1.0
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=True)
    with pytest.raises(DeepLenseError, match="refus"):
        S.load_sample(path)
    result = S.simulate_dataset("Model_II", tmp_path, 1, 0, seed=0, workers=1, classes="axion")
    assert result["written"] == 1
    assert path.read_bytes() == good and not (tmp_path / "pwned").exists()


def test_model_i_dataset_and_parallel_workers_match_serial(tmp_path: Path) -> None:
    serial = S.simulate_dataset(
        "Model_I", tmp_path / "a", 2, 1, seed=9, workers=1, classes="cdm,no_sub"
    )
    parallel = S.simulate_dataset(
        "Model_I", tmp_path / "b", 2, 1, seed=9, workers=2, classes=["no_sub", "cdm"], chunk_size=1
    )
    assert serial["written"] == parallel["written"] == 6 and parallel["workers"] == 2
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert not (tmp_path / "a" / "Model_I" / "axion").exists()
    sample = np.load(next((tmp_path / "a" / "Model_I" / "cdm").iterdir()))
    assert sample.shape == (150, 150)


# --- CLI -----------------------------------------------------------------------------------
def test_cli_simulate_writes_and_reports(tmp_path: Path) -> None:
    args = [
        "data",
        "simulate",
        "Model_III",
        "--train-per-class",
        "1",
        "--test-per-class",
        "1",
        "--workers",
        "1",
        "--classes",
        "cdm",
        "--seed",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "Model_III") in result.output
    assert "written" in result.output
    assert len(list((tmp_path / "Model_III" / "cdm").glob("*.npy"))) == 1
    assert len(list((tmp_path / "Model_III_test" / "cdm").glob("*.npy"))) == 1
    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 0 and "already present" in rerun.output


def test_cli_defaults_to_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLENSE_DATA_ROOT", str(tmp_path / "root"))
    args = [
        "data",
        "simulate",
        "Model_II",
        "--train-per-class",
        "1",
        "--test-per-class",
        "0",
        "--workers",
        "1",
        "--classes",
        "no_sub",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "root" / "Model_II" / "no_sub").glob("*.npy"))) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Model_X"], "Model_I, Model_II, Model_III"),
        (["Model_II", "--classes", "wdm"], "axion, cdm, no_sub"),
        (["Model_II", "--train-per-class", "-1"], ">= 0"),
        (["Model_II", "--workers", "0"], "workers must be >= 1"),
        (["Model_II", "--seed", "-3"], "non-negative"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["data", "simulate", *args, "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.npy"))


# --- recipe overrides (--set KEY=VALUE) ---------------------------------------------------
def _radius(image: np.ndarray) -> float:
    """Flux-weighted mean distance from the image centre, in pixels."""
    n = image.shape[0]
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return float((image * np.hypot(xx, yy)).sum() / image.sum())


def _roughness(image: np.ndarray) -> float:
    """Summed absolute second differences (curvature) over the total flux."""
    curvature = np.abs(np.diff(image, 2, axis=0)).sum() + np.abs(np.diff(image, 2, axis=1)).sum()
    return float(curvature / image.sum())


def test_recipe_keys_are_described_and_published_values_are_the_presets() -> None:
    from deeplense_cli.simulate.render import single_band_preset

    assert set(S.KEY_HELP) == set(S.RECIPE_KEYS)
    for model in ("Model_II", "Model_III"):
        preset, base = single_band_preset(model), S.base_recipe(model)
        assert (base.psf_fwhm, base.pixel_scale) == (preset["seeing"], preset["pixel_scale"])
    base = S.base_recipe("Model_I")
    assert (base.image_size, base.pixel_scale, base.psf_fwhm, base.noise) == (150, 0.05, 0.087, 1)
    assert base.einstein_radius[0] == base.einstein_radius[1] == pytest.approx(1.2815, abs=1e-4)
    assert base.overrides() == {} and not base.lens_light
    assert S.resolve_recipe("Model_III", {"psf_fwhm": 0.08}).overrides() == {}  # = published


@pytest.mark.parametrize("model", ["Model_I", "Model_III"])
def test_fast_path_equals_lenstronomy_under_overrides(model: str) -> None:
    recipe = S.resolve_recipe(
        model,
        {
            "psf_fwhm": 0.2,
            "pixel_scale": 0.1,
            "image_size": 40,
            "einstein_radius": "1.0:2.0",
            "lens_light": True,
        },
    )
    reference = S.ReferenceSimulator(model, "axion", recipe)
    fast = S.fast_simulator(model, recipe)
    for index in range(2):
        rng = S.image_rng(7, model, "train", "axion", index)
        params = S.draw_params(model, "axion", rng, recipe)
        assert 1.0 <= params.theta_E <= 2.0
        expected, got = reference.render(params), fast.render(params)
        assert got.shape == expected.shape == (40, 40)
        assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-10


def test_wider_psf_gives_smoother_images() -> None:
    base, _ = S.simulate_images("Model_III", "cdm", 2, seed=1)
    wide, _ = S.simulate_images("Model_III", "cdm", 2, seed=1, recipe={"psf_fwhm": "0.24"})
    for b, w in zip(base, wide, strict=True):
        assert _roughness(w) < 0.7 * _roughness(b) and w.max() < b.max()
        assert w.sum() == pytest.approx(b.sum(), rel=0.02)  # the same light, spread out


def test_pixel_scale_and_image_size_set_the_grid() -> None:
    base, _ = S.simulate_images("Model_III", "no_sub", 2, seed=1)
    small, _ = S.simulate_images("Model_III", "no_sub", 2, seed=1, recipe={"image_size": 32})
    coarse, _ = S.simulate_images("Model_III", "no_sub", 2, seed=1, recipe={"pixel_scale": 0.16})
    assert small.shape == (2, 32, 32) and coarse.shape == (2, 64, 64)
    # the central 32 pixels of the same sky (even sizes share the pixel grid); the PSF's
    # clamped edges differ
    inner = small[:, 4:-4, 4:-4]
    assert np.allclose(inner, base[:, 20:44, 20:44], rtol=1e-9, atol=1e-12 * base.max())
    for b, c in zip(base, coarse, strict=True):  # pixels twice as large: the ring half as wide
        assert _radius(c) / _radius(b) == pytest.approx(0.5, abs=0.1)


def test_einstein_radius_range_grows_the_ring_and_keeps_other_draws() -> None:
    recipe = S.resolve_recipe("Model_III", {"einstein_radius": "1.8:2.2"})
    base, _ = S.simulate_images("Model_III", "no_sub", 3, seed=1)
    big, _ = S.simulate_images("Model_III", "no_sub", 3, seed=1, recipe=recipe)
    for i in range(3):
        rng = S.image_rng(1, "Model_III", "train", "no_sub", i)
        params = S.draw_params("Model_III", "no_sub", rng, recipe)
        published = S.draw_params(
            "Model_III", "no_sub", S.image_rng(1, "Model_III", "train", "no_sub", i)
        )
        assert 1.8 <= params.theta_E <= 2.2
        assert (params.source_x, params.source_y) == (published.source_x, published.source_y)
        assert _radius(big[i]) > 1.2 * _radius(base[i])


def test_lens_light_adds_flux_at_the_centre() -> None:
    base, _ = S.simulate_images("Model_III", "cdm", 2, seed=1)
    lit, _ = S.simulate_images("Model_III", "cdm", 2, seed=1, recipe={"lens_light": "true"})
    added = lit - base
    assert np.allclose(added[0], added[1])  # the same galaxy in every image
    assert added.min() >= -1e-12 and added[0, 30:34, 30:34].mean() > base[:, 30:34, 30:34].max()
    assert np.unravel_index(np.argmax(added[0]), (64, 64)) in {
        (31, 31),
        (31, 32),
        (32, 31),
        (32, 32),
    }
    assert lit[:, 30:34, 30:34].mean() > 5 * base[:, 30:34, 30:34].mean()


def test_noise_levels_none_model_i_and_three_times() -> None:
    def images(noise: float) -> np.ndarray:
        return S.simulate_images("Model_I", "no_sub", 2, seed=3, recipe={"noise": noise})[0]

    published, quiet, loud = images(1), images(0), images(3)
    assert np.array_equal(published, S.simulate_images("Model_I", "no_sub", 2, seed=3)[0])
    for i in range(2):
        rng = S.image_rng(3, "Model_I", "train", "no_sub", i)
        params = S.draw_params("Model_I", "no_sub", rng)
        expected = params.exposure_time * S.fast_simulator("Model_I").render(params)
        assert np.array_equal(quiet[i], expected)  # no noise: the expected counts
        assert quiet[i][:10, :10].std() < 1e-6 * expected.max() < published[i][:10, :10].std()
        assert np.allclose(loud[i] - expected, 3 * (published[i] - expected))

    # Model_III is noise-free as published; noise > 0 adds Model_I's noise, scaled with it
    clean, _ = S.simulate_images("Model_III", "no_sub", 2, seed=3)
    one, _ = S.simulate_images("Model_III", "no_sub", 2, seed=3, recipe={"noise": 1})
    three, _ = S.simulate_images("Model_III", "no_sub", 2, seed=3, recipe={"noise": 3})
    sky = (slice(0, 10), slice(0, 10))  # a corner, nearly empty sky
    for noisy, smooth in zip(one, clean, strict=True):
        assert _roughness(noisy[sky]) > 10 * _roughness(smooth[sky])
    assert np.allclose(three - clean, 3 * (one - clean))
    snr = clean[0].max() / (one[0] - clean[0])[sky].std()
    assert 10 < snr < 300, snr  # Model_I-like, neither swamping nor invisible


def test_overrides_are_deterministic_and_recorded_with_the_data(tmp_path: Path) -> None:
    settings = {"psf_fwhm": 0.2, "lens_light": True, "einstein_radius": (1.0, 2.0), "noise": 2}
    a = S.simulate_dataset("Model_III", tmp_path / "a", 2, 1, seed=4, workers=1, recipe=settings)
    b = S.simulate_dataset("Model_III", tmp_path / "b", 2, 1, seed=4, workers=2, recipe=settings)
    assert a["written"] == b["written"] == 9 and _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a["overrides"] == {
        "psf_fwhm": 0.2,
        "lens_light": True,
        "einstein_radius": [1.0, 2.0],
        "noise": 2.0,
    }
    for folder in ("Model_III", "Model_III_test"):
        record = S.read_record(tmp_path / "a" / folder)
        assert record is not None and record["overrides"] == a["overrides"]
        assert record["recipe"]["image_size"] == 64 and record["seeds"] == [4]
    # image i keeps its published file name: variants of one image pair up across folders
    published = S.simulate_dataset("Model_III", tmp_path / "p", 2, 1, seed=4, workers=1)
    names = {Path(k).name for k in _files(tmp_path / "a")}
    assert names == {Path(k).name for k in _files(tmp_path / "p")}
    assert S.read_record(tmp_path / "p" / "Model_III")["overrides"] == {}  # type: ignore[index]
    assert published["overrides"] == {}
    again = S.simulate_dataset(
        "Model_III", tmp_path / "a", 2, 1, seed=4, workers=1, recipe=settings
    )
    assert again["skipped"] == 9


def test_another_recipe_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    S.simulate_dataset("Model_II", tmp_path, 1, 0, seed=0, workers=1, classes="cdm")
    before = _files(tmp_path)
    with pytest.raises(DeepLenseError, match=r"another recipe .*none, this run's psf_fwhm=0\.3"):
        S.simulate_dataset(
            "Model_II", tmp_path, 1, 0, seed=0, workers=1, classes="cdm", recipe={"psf_fwhm": 0.3}
        )
    # images without a record (e.g. the released data) take the published recipe only
    (tmp_path / "Model_II" / "recipe.json").unlink()
    with pytest.raises(DeepLenseError, match=r"without a recipe\.json"):
        S.simulate_dataset(
            "Model_II", tmp_path, 1, 0, seed=0, workers=1, classes="cdm", recipe={"noise": 1}
        )
    assert _files(tmp_path) == before
    resumed = S.simulate_dataset("Model_II", tmp_path, 1, 0, seed=1, workers=1, classes="cdm")
    assert resumed["written"] == 1 and S.read_record(tmp_path / "Model_II")["seeds"] == [1]  # type: ignore[index]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"psf": 0.2}, "unknown recipe key 'psf'"),
        ({"psf_fwhm": "wide"}, "expected a number"),
        ({"psf_fwhm": True}, "expected a number"),
        ({"pixel_scale": 0}, "> 0"),
        ({"image_size": 3.5}, "an integer from 8"),
        ({"einstein_radius": "2:1"}, "LO <= HI"),
        ({"einstein_radius": "1:2:3"}, "LO:HI"),
        ({"noise": -1}, ">= 0"),
        ({"noise": "nan"}, "finite"),
        ({"lens_light": "maybe"}, "true or false"),
    ],
)
def test_bad_overrides_are_one_line_errors(recipe: dict[str, object], message: str) -> None:
    with pytest.raises(DeepLenseError, match=message) as info:
        S.resolve_recipe("Model_III", recipe)
    text = str(info.value)
    assert "\n" not in text and "known keys: psf_fwhm, pixel_scale, image_size" in text


def test_cli_set_overrides_the_recipe_and_records_it(tmp_path: Path) -> None:
    args = ["data", "simulate", "Model_III", "--train-per-class", "1", "--test-per-class", "0"]
    args += ["--workers", "1", "--classes", "no_sub", "--out", str(tmp_path)]
    result = CliRunner().invoke(
        cli, [*args, "--set", "psf_fwhm=0.2", "--set", "lens_light=true", "--set", "image_size=48"]
    )
    assert result.exit_code == 0, result.output
    assert "psf_fwhm=0.2" in result.output and "48x48" in result.output
    record = S.read_record(tmp_path / "Model_III")
    assert record is not None
    assert record["overrides"] == {"psf_fwhm": 0.2, "lens_light": True, "image_size": 48}
    assert np.load(next((tmp_path / "Model_III" / "no_sub").iterdir())).shape == (48, 48)
    mixed = CliRunner().invoke(cli, [*args, "--set", "psf_fwhm=0.3"])
    assert mixed.exit_code == 1 and "another recipe" in mixed.output
    assert "Traceback" not in mixed.output and "Writing" not in mixed.output


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("psf_width=0.2", "unknown recipe key 'psf_width'"),
        ("psf_fwhm", "is not KEY=VALUE"),
        ("image_size=many", "expected an integer"),
        ("lens_light=2", "true or false"),
    ],
)
def test_cli_rejects_bad_overrides_in_one_line(tmp_path: Path, setting: str, message: str) -> None:
    result = CliRunner().invoke(
        cli, ["data", "simulate", "Model_III", "--set", setting, "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "known keys: psf_fwhm" in result.output
    assert not list(tmp_path.rglob("*"))


def test_shift_suite_builds_one_class_tree_per_variant(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "benchmarks" / "shift_suite.py"
    out = tmp_path / "suite"
    args = [sys.executable, str(script), "build", "--model", "Model_III", "--per-class", "2"]
    args += ["--out", str(out), "--workers", "1", "--variants", "psf_wide,png8,blank"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Built 4 variants" in done.stdout  # id too: png8 and blank are made from it
    suite = json.loads((out / "suite.json").read_text())
    assert (
        suite["seed"] == 2
        and suite["split"] == "test"
        and set(suite["variants"])
        == {
            "id",
            "psf_wide",
            "png8",
            "blank",
        }
    )
    assert suite["variants"]["psf_wide"]["recipe_overrides"] == {"psf_fwhm": 0.2}
    for name, suffix in (("id", ".npy"), ("psf_wide", ".npy"), ("png8", ".png"), ("blank", ".npy")):
        for cls in KNOWN_CLASSES:
            files = sorted((out / name / cls).iterdir())
            assert [f.suffix for f in files] == [suffix, suffix], (name, cls)
            assert suite["variants"][name]["counts"][cls] == 2
    # paired with id file by file; the PSF is wider
    for path in (out / "id" / "cdm").iterdir():
        plain, _ = S.load_sample(path)
        wide, _ = S.load_sample(out / "psf_wide" / "cdm" / path.name)
        assert _roughness(wide) < _roughness(plain)
    assert S.read_record(out / "psf_wide")["overrides"] == {"psf_fwhm": 0.2}  # type: ignore[index]
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds a suite" in again.stderr
