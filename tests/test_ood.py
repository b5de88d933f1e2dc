"""The out-of-distribution flag: the detector, its ONNX output, predict and evaluate with it,
the shipped models' detectors and exports that carry one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deeplense_cli.cli import cli
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.evaluation.ood import METHOD, Detector, descriptor, fit, ood_metrics
from deeplense_cli.registry import pretrained


def _invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh simulations (a seed no shipped model trained on) of all three datasets."""
    from deeplense_cli.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("fresh")
    for model in ("Model_I", "Model_II", "Model_III"):
        simulate_dataset(model, root, train_per_class=0, test_per_class=30, seed=2, workers=1)
    return root


@pytest.fixture(scope="module")
def strange(tmp_path_factory: pytest.TempPathFactory, fresh: Path) -> Path:
    """Images no DeepLense model should answer: noise, blank, our own images as 8-bit PNG."""
    folder = tmp_path_factory.mktemp("strange")
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(folder / f"noise{i}.npy", rng.standard_normal((64, 64)).astype(np.float32))
    np.save(folder / "blank.npy", np.zeros((64, 64), np.float32))
    for i, path in enumerate(sorted((fresh / "Model_III_test" / "cdm").glob("*.npy"))[:4]):
        x = np.load(path, allow_pickle=False).astype(np.float32)
        q = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
        Image.fromarray(q).save(folder / f"png8_{i}.png")
    return folder


def test_detector_flags_the_quantile_and_scores_far_points_high() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = rng.integers(0, 3, 3000)
    features = means[labels] + rng.standard_normal((3000, 3))
    held = means[rng.integers(0, 3, 2000)] + rng.standard_normal((2000, 3))
    det = fit(features, labels, 3, held, quantile=0.99)
    assert det.info["calibration_flagged"] == pytest.approx(0.01, abs=0.002)
    fresh = means[rng.integers(0, 3, 4000)] + rng.standard_normal((4000, 3))
    assert (det.scores(fresh) > det.threshold).mean() == pytest.approx(0.01, abs=0.006)
    far = np.full((10, 3), 12.0)
    assert (det.scores(far) > det.threshold).all()
    # the distance is Mahalanobis: the nearest mean, in units of the shared spread
    assert det.scores(means[1:2])[0] == pytest.approx(0.0, abs=0.05)
    m = ood_metrics(np.array([0, 0, 9, 9.0]), 1.0, np.array([0, 1, 1, 1]), np.array([0, 1, 0, 0]))
    assert m["flagged"] == 2 and m["flagged_fraction"] == 0.5
    assert m["accuracy_in_distribution"] == 1.0 and m["accuracy_flagged"] == 0.0


def test_detector_round_trips_without_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    det = fit(
        rng.standard_normal((200, 4)), rng.integers(0, 2, 200), 2, rng.standard_normal((50, 4))
    )
    det.save(tmp_path / "d.npz")
    back = Detector.load(tmp_path / "d.npz")
    x = rng.standard_normal((7, 4))
    assert np.allclose(back.scores(x), det.scores(x)) and back.threshold == det.threshold


@pytest.mark.parametrize("name", sorted(pretrained.shipped_models()))
def test_shipped_models_carry_a_detector_that_matches_numpy(name: str, fresh: Path) -> None:
    """The ood_score output of the file is the numpy detector's score of its features."""
    from deeplense_cli.data.imageset import load_image_set
    from deeplense_cli.data.transforms import apply_transform
    from deeplense_cli.deploy.ood_graph import features_of

    shipped = pretrained.shipped_models()[name]
    model = OnnxModel(shipped.path, device="cpu")
    assert model.ood is not None and model.ood_threshold == shipped.card["ood"]["threshold"]
    assert shipped.card["ood"]["test_flagged"] <= 0.02  # the goal, on 6,000 images
    images = load_image_set(fresh / f"{shipped.card['dataset']}_test")
    x = apply_transform(np.asarray(images.images[:16]), model.transform)
    _, scores = model.outputs(x)
    assert scores is not None and scores.shape == (16,)
    import onnx
    from onnx import numpy_helper

    init = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(shipped.path)).graph.initializer
    }
    z = features_of(shipped.path, x).astype(np.float64) @ init["ood_factor"]
    expect = ((z[:, None, :] - init["ood_centres"][None]) ** 2).sum(-1).min(1)
    assert np.allclose(scores, expect, rtol=1e-4, atol=1e-3)


def test_predict_flags_strange_images_and_says_so_in_one_line(
    strange: Path, fresh: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.csv"
    res = _invoke("predict", "Model_III", strange, fresh / "Model_III_test", "-o", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 99
    odd = [r for r in rows if "strange" in r["path"]]
    own = [r for r in rows if "Model_III_test" in r["path"]]
    assert all(r["in_distribution"] == "false" for r in odd), odd
    assert sum(r["in_distribution"] == "false" for r in own) <= 5  # ~1% by design
    assert all(float(r["ood_score"]) > 0 for r in rows)
    warning = [line for line in res.output.splitlines() if "flagged" in line]
    flagged = sum(r["in_distribution"] == "false" for r in rows)
    assert len(warning) == 1 and warning[0].startswith(f"Warning: {flagged} of 99 image(s)")
    assert "train --init Model_III" in warning[0]


def test_reject_ood_labels_flagged_images_unknown(strange: Path) -> None:
    res = _invoke("predict", "Model_III", strange, "--reject-ood", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["counts"]["unknown"] == 9 and doc["flagged"] == 9
    assert all(
        p["predicted"] == "unknown" and p["in_distribution"] is False for p in doc["predictions"]
    )


@pytest.mark.parametrize("other", ["Model_I", "Model_II"])
def test_another_instrument_is_flagged(other: str, fresh: Path) -> None:
    """Model_III's model on images of another DeepLense instrument, resized to its size."""
    res = _invoke("predict", "Model_III", fresh / f"{other}_test", "--resize", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["flagged"] >= 0.95 * doc["images"]


def test_evaluate_reports_the_flag(fresh: Path) -> None:
    res = _invoke("evaluate", "Model_III", "--data", fresh / "Model_III_test", "--json")
    assert res.exit_code == 0, res.output
    ood = json.loads(res.output)["ood"]
    assert ood["flagged"] <= 5 and ood["accuracy_in_distribution"] >= 0.95
    assert ood["threshold"] == pretrained.shipped_models()["model_iii"].card["ood"]["threshold"]


def test_export_embeds_a_detector_and_the_run_fits_the_same_kind(
    quick_train, tmp_path: Path, strange: Path, sim_root: Path
) -> None:
    run = quick_train(tmp_path / "run", "--val-fraction", "0.3", "--epochs", "3", model="cvt")
    res = _invoke("export", "onnx", run.path)
    assert res.exit_code == 0, res.output
    assert "Out-of-distribution detector" in res.output
    model = OnnxModel(run.path / "model.onnx", device="cpu")
    assert model.ood is not None and "validation split" in model.ood["calibrated_on"]
    for target in (run.path / "model.onnx", run.path):
        res = _invoke("predict", target, strange, "--json")
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output[res.output.index("{") :])
        blank = next(p for p in doc["predictions"] if p["path"].endswith("blank.npy"))
        assert blank["in_distribution"] is False, doc
        assert doc["ood"]["method"] == METHOD
    assert (run.path / "ood-best.npz").is_file()  # the run keeps its fitted detector
    res = _invoke("evaluate", run.path, "--json")
    assert res.exit_code == 0 and "flagged_fraction" in json.loads(res.output)["ood"]


def test_a_model_without_detector_warns_and_refuses_reject(
    trained_run: Path, real_samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export from before the detector (here: one stripped of it) still predicts, and says
    that nothing is flagged; --reject-ood needs a detector."""
    import onnx

    shipped = pretrained.shipped_models()["model_iii"]
    model = onnx.load(str(shipped.path))
    keep = [o for o in model.graph.output if o.name != "ood_score"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    res = _invoke("predict", path, real_samples, "--json")
    assert res.exit_code == 0, res.output
    assert "no out-of-distribution detector" in res.output
    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["flagged"] is None and "in_distribution" not in doc["predictions"][0]
    res = _invoke("predict", path, real_samples, "--reject-ood")
    assert res.exit_code == 1 and "--reject-ood needs" in res.output


def test_the_input_statistics_in_onnx_equal_numpy() -> None:
    """The detector's input statistics: the ONNX nodes compute what descriptor() does."""
    from deeplense_cli.deploy.ood_graph import features_of

    shipped = pretrained.shipped_models()["model_ii"]
    size = OnnxModel(shipped.path, device="cpu").transform["image_size"]
    x = np.random.default_rng(0).standard_normal((5, 1, size, size)).astype(np.float32)
    d = descriptor(x)
    assert d.shape == (5, 24)
    np.testing.assert_allclose(features_of(shipped.path, x)[:, -24:], d, atol=1e-4)
    # a brighter centre moves the first ring's mean; sharper noise the Laplacian rings
    y = x.copy()
    y[:, :, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] += 5
    assert (descriptor(y)[:, 0] > d[:, 0] + 1).all()
    assert (descriptor(3 * x)[:, 8:16] > 2.9 * d[:, 8:16]).all()


def test_a_degrade_trained_run_fits_its_detector_on_8_bit_files_too(
    quick_train, tmp_path: Path
) -> None:
    """train.degrade: the model sees 8-bit PNG/JPEG versions in training, and its detector
    is fitted and calibrated with them (it should answer such files, not flag them)."""
    from deeplense_cli.data.degrade import degrade
    from deeplense_cli.evaluation.ood import Detector

    x = np.random.default_rng(0).random((6, 1, 16, 16)).astype(np.float32) * 7
    y = degrade(x, np.random.default_rng(1), 1.0)
    assert all(len(np.unique(im)) <= 256 for im in y) and y.max() <= 255
    assert np.array_equal(degrade(x, np.random.default_rng(1), 0.0), x)
    run = quick_train(
        tmp_path / "run", "--val-fraction", "0.3", "--set", "train.degrade=0.5", model="cvt"
    )
    res = _invoke("evaluate", run.path, "--json")
    assert res.exit_code == 0, res.output
    det = Detector.load(run.path / "ood-best.npz")
    assert det.info["degraded"] is True
    res = _invoke("export", "onnx", run.path, "--json")
    assert res.exit_code == 0, res.output
    assert OnnxModel(run.path / "model.onnx", device="cpu").ood is not None


def test_the_python_api_carries_the_flag(strange: Path, real_samples: Path) -> None:
    from deeplense_cli import api

    model = api.load_model("Model_III")
    files = model.predict_files([strange, real_samples])
    assert files.in_distribution is not None
    flags = dict(zip(files.paths or [], files.in_distribution, strict=True))
    assert not any(v for k, v in flags.items() if "strange" in k)
    assert all(v for k, v in flags.items() if "real_samples" in k)  # the released images
    arrays = model.predict(np.zeros((2, 64, 64)))
    assert arrays.in_distribution is not None and not arrays.in_distribution.any()
    assert arrays.threshold == model.predictor.ood_threshold
