"""The shared image transform: min-max per image, then the training set's standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.transforms import (
    STATS_SAMPLE,
    apply_transform,
    center_crop,
    check_crop,
    default_transform,
    normalize,
    pixel_statistics,
    source_size,
)


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.gamma(0.5, 3.0, size=(n, 1, 8, 8)) + rng.uniform(0, 5, size=(n, 1, 1, 1))).astype(
        np.float32
    )


def test_standardisation_uses_the_given_statistics() -> None:
    x = _images(5)
    spec = default_transform(8, 1, mean=0.25, std=0.5)
    assert spec == {
        "normalize": "minmax",
        "image_size": 8,
        "in_channels": 1,
        "mean": 0.25,
        "std": 0.5,
    }
    out = apply_transform(x, spec)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    minmax = (x - lo) / (x.max(axis=(1, 2, 3), keepdims=True) - lo)
    np.testing.assert_allclose(out, (minmax - 0.25) / 0.5, rtol=1e-6, atol=1e-6)
    assert out.dtype == np.float32


def test_specs_without_statistics_stay_plain_minmax() -> None:
    # runs and exports made before standardisation existed keep their exact transform
    x = _images(3)
    out = apply_transform(x, {"normalize": "minmax", "image_size": 8, "in_channels": 1})
    np.testing.assert_array_equal(out, normalize(x))
    assert out.min() == 0.0 and out.max() == 1.0


def test_pixel_statistics_match_numpy_and_sample_deterministically() -> None:
    x = _images(300, seed=1)
    idx = np.arange(0, 300, 2)
    mean, std = pixel_statistics(x, idx)
    ref = normalize(x[idx]).astype(np.float64)
    assert mean == pytest.approx(ref.mean(), rel=1e-9) and std == pytest.approx(ref.std(), rel=1e-9)
    standardised = (ref - mean) / std
    assert abs(standardised.mean()) < 1e-9 and standardised.std() == pytest.approx(1.0)

    big = np.broadcast_to(x[:1], (STATS_SAMPLE * 2, 1, 8, 8))
    assert pixel_statistics(big, np.arange(len(big))) == pixel_statistics(big, np.arange(len(big)))
    with pytest.raises(DeepLenseError, match="no training images"):
        pixel_statistics(x, np.array([], dtype=int))


def test_constant_training_images_only_shift() -> None:
    x = np.ones((4, 1, 8, 8), np.float32)
    assert pixel_statistics(x, np.arange(4)) == (0.0, 1.0)


@pytest.mark.parametrize("mean, std", [(0.1, 0.0), (0.1, -1.0), (float("nan"), 1.0), ("a", 1)])
def test_bad_statistics_are_a_clear_error(mean: object, std: object) -> None:
    spec = {"normalize": "minmax", "image_size": 8, "in_channels": 1, "mean": mean, "std": std}
    with pytest.raises(DeepLenseError, match="bad transform statistics"):
        apply_transform(_images(2), spec)


def test_centre_crop_keeps_the_middle_and_the_spec_says_both_sizes() -> None:
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    np.testing.assert_array_equal(center_crop(x, 4)[0, 0], x[0, 0, 2:6, 2:6])
    assert center_crop(x, None) is x
    spec = default_transform(8, 1, crop=4)
    assert spec["image_size"] == 4 and spec["crop"] == 4 and source_size(spec) == 8
    out = apply_transform(x, spec)
    assert out.shape == (1, 1, 4, 4)
    np.testing.assert_allclose(out, normalize(x[..., 2:6, 2:6]))  # min-max over the crop only
    with pytest.raises(DeepLenseError, match="model expects 1x8x8"):
        apply_transform(x[..., :4, :4], spec)  # raw images come at the source size


def test_crop_statistics_and_bad_crops() -> None:
    x = _images(20)
    mean, std = pixel_statistics(x, np.arange(20), crop=4)
    ref = normalize(x[..., 2:6, 2:6])
    assert mean == pytest.approx(float(ref.mean()), rel=1e-5)
    assert std == pytest.approx(float(ref.std()), rel=1e-4)
    for bad in (0, -3, 2.5, True, "50"):
        with pytest.raises(DeepLenseError, match=r"data\.crop must be a whole number"):
            check_crop(bad)
    with pytest.raises(DeepLenseError, match="choose at most 64"):
        check_crop(100, 64)
    check_crop(None)
    check_crop(50, 64)


def test_a_bad_crop_is_refused_before_a_run_folder_exists(tmp_path, sim_root) -> None:
    from click.testing import CliRunner

    from deeplense_cli.cli import cli

    base = ["train", "-m", "resnet18", "--data", str(sim_root / "Model_III"), "--run-dir"]
    for crop, message in (("0", "data.crop must be a whole number"), ("65", "choose at most 64")):
        run = tmp_path / f"crop-{crop}"
        result = CliRunner().invoke(cli, [*base, str(run), "--set", f"data.crop={crop}"])
        assert result.exit_code == 1 and message in result.output, result.output
        assert "Traceback" not in result.output
        assert not (run / "config.yaml").exists()
