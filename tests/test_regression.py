"""Axion-mass regression (``train --task axion-mass``): config, metrics, and the whole path
train -> evaluate -> export onnx -> predict on simulated Model_III data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.evaluation.metrics import axion_mass_bins
from deeplense_cli.evaluation.regression import mass_bins, regression_metrics
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import TargetScaling
from deeplense_cli.training.config import resolve

QUICK = ["--batch-size", "16", "--output", "quiet", "--num-threads", "1"]


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


# ---- configuration ------------------------------------------------------------------
def test_classification_stays_the_default() -> None:
    config = resolve(flags={"model": {"name": "resnet18"}})
    assert config["train"]["task"] == "classify"
    assert config["train"]["early_stopping_metric"] == "val_macro_auc"


def test_axion_mass_task_selects_by_mae_and_checks_its_settings() -> None:
    flags = {"model": {"name": "resnet18"}, "train": {"task": "axion-mass"}}
    config = resolve(flags=flags)
    assert config["train"]["early_stopping_metric"] == "val_mae"
    assert config["train"]["regression_loss"] == "huber"
    assert config["train"]["target_scaling"] == "standardize"
    with pytest.raises(DeepLenseError, match="val_accuracy is not recorded by --task axion-mass"):
        resolve(flags=flags, overrides={"train.early_stopping_metric": "val_accuracy"})
    with pytest.raises(DeepLenseError, match="val_mae is not recorded by --task classify"):
        resolve(
            flags={"model": {"name": "resnet18"}}, overrides={"early_stopping_metric": "val_mae"}
        )
    with pytest.raises(DeepLenseError, match=r"train\.regression_loss must be one of"):
        resolve(flags=flags, overrides={"train.regression_loss": "hinge"})
    with pytest.raises(DeepLenseError, match=r"train\.task must be one of"):
        resolve(flags={"model": {"name": "resnet18"}, "train": {"task": "mass"}})


def test_target_scaling_round_trips_and_refuses_a_broken_record() -> None:
    scaling = TargetScaling(mean=-23.0, std=0.5)
    assert scaling.to_log10_mass(scaling.to_output(-22.2)) == pytest.approx(-22.2)
    assert TargetScaling.from_record(scaling.record()) == scaling
    with pytest.raises(DeepLenseError, match="std must be positive"):
        TargetScaling.from_record({"mean": -23.0, "std": 0.0})
    assert TargetScaling.from_metadata({}, "m.onnx") is None  # a classifier's file


# ---- metrics ------------------------------------------------------------------------
def test_regression_metrics_and_the_classifier_bins() -> None:
    truth = np.array([-23.9, -23.6, -23.1, -22.7, -22.2])
    pred = truth + np.array([0.1, -0.1, 0.2, -0.2, 0.0])
    m = regression_metrics(truth, pred, baseline=float(truth.mean()))
    assert m["mae"] == pytest.approx(0.12)
    assert m["rmse"] == pytest.approx(np.sqrt(0.1 / 5))
    assert m["bias"] == pytest.approx(0.0, abs=1e-12)
    assert m["r2"] == pytest.approx(1 - 0.02 / np.var(truth))
    assert m["mae_mean_predictor"] == pytest.approx(np.abs(truth - truth.mean()).mean())
    bins = mass_bins(truth, pred)
    # the same edges as the classifier's recall-by-mass table
    labels = np.zeros(len(truth), dtype=np.int64)
    recall = axion_mass_bins(labels, labels, 10**truth, ["axion"])
    edges = [(b["log10_mass_min"], b["log10_mass_max"], b["n"]) for b in bins]
    assert edges == [(b["log10_mass_min"], b["log10_mass_max"], b["n"]) for b in recall]
    assert sum(b["n"] for b in bins) == 5


# ---- data without masses ------------------------------------------------------------
def test_data_without_axion_masses_is_a_clear_error(sim_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "no_axions"
    for cls in ("cdm", "no_sub"):
        shutil.copytree(sim_root / "Model_III" / cls, data / cls)
    result = CliRunner().invoke(
        cli,
        ["train", "-m", "resnet18", "--data", str(data), "--task", "axion-mass",
         "--run-dir", str(tmp_path / "run"), "--epochs", "1", *QUICK],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "needs images that carry an axion mass" in result.output
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_an_axion_folder_alone_trains_a_regressor_and_not_a_classifier(
    sim_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "axions"
    shutil.copytree(sim_root / "Model_III" / "axion", data / "axion")
    refused = CliRunner().invoke(
        cli,
        ["train", "-m", "resnet18", "--data", str(data), "--run-dir", str(tmp_path / "clf"),
         "--epochs", "1", *QUICK],
    )  # fmt: skip
    assert refused.exit_code != 0
    assert "single class (axion); a classifier needs at least two" in refused.output
    assert "--task axion-mass" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "clf" / "config.yaml").exists()

    run_dir = tmp_path / "reg"
    _invoke(
        ["train", "-m", "resnet18", "--data", str(data), "--task", "axion-mass",
         "--run-dir", str(run_dir), "--epochs", "1", "--set", "data.test_fraction=0.25", *QUICK]
    )  # fmt: skip
    run = RunDir.open(run_dir)
    assert run.classes == ["axion"]
    sizes = run.read_record("split")["sizes"]
    assert sizes["train"] > 0 and sizes["val"] > 0 and sizes["test"] > 0
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["task"] == "axion-mass" and np.isfinite(metrics["mae"])


# ---- train -> evaluate -> export -> predict -----------------------------------------
@pytest.fixture(scope="module")
def mass_run(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two quick epochs of a ResNet-18 regressor on the session's small simulated set."""
    run_dir = tmp_path_factory.mktemp("massrun") / "run"
    _invoke(
        ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
         "--task", "axion-mass", "--run-dir", str(run_dir), "--epochs", "2", *QUICK,
         "--no-evaluate"]
    )  # fmt: skip
    return run_dir


def test_a_regression_run_records_its_target(mass_run: Path) -> None:
    run = RunDir.open(mass_run)
    assert run.task == "axion-mass"
    target = run.read_record("target")
    assert target["task"] == "axion-mass" and target["loss"] == "huber"
    assert -24 < target["mean"] < -22 and 0 < target["std"] < 1
    split = run.read_record("split")
    # the axion images only (24 per class, 10% for validation): cdm and no_sub carry no mass
    assert split["sizes"] == {"train": 22, "val": 2, "test": 8}
    rows = run.read_metrics()
    assert len(rows) == 2
    assert {"val_mae", "val_rmse", "val_r2", "val_loss"} <= set(rows[-1])
    assert "val_accuracy" not in rows[-1]


def test_evaluate_reports_errors_in_dex(mass_run: Path) -> None:
    out = _invoke(["evaluate", str(mass_run), "--json"])
    metrics = json.loads(out[out.index("{") :])
    assert metrics["task"] == "axion-mass"
    assert metrics["n"] == 8  # the test folder's axion images
    assert metrics["rmse"] >= metrics["mae"] > 0
    assert {"r2", "bias", "mae_mean_predictor", "target"} <= set(metrics)
    assert sum(b["n"] for b in metrics["mass_bins"]) == 8
    folder = Path(metrics["out_dir"])
    for name in ("metrics.json", "mass_scatter.png", "mass_residuals.png"):
        assert (folder / name).stat().st_size > 0
    table = _invoke(["evaluate", str(mass_run)])
    assert "MAE predicting the mean" in table and "Error by axion mass" in table


def test_export_and_predict_give_the_mass(mass_run: Path, sim_root: Path, tmp_path: Path) -> None:
    import onnx

    onnx_path = tmp_path / "mass.onnx"
    out = _invoke(["export", "onnx", str(mass_run), "-o", str(onnx_path)])
    assert "log10 axion mass: ONNX within" in out
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["deeplense.task"] == "axion-mass"
    scaling = TargetScaling.from_record(json.loads(meta["deeplense.target"]))
    assert scaling == RunDir.open(mass_run).target_scaling
    check = json.loads(meta["deeplense.validation"])["regression"]
    assert check["max_abs_error_dex"] < 2e-3
    # the out-of-distribution detector of a regressor: one mean, of its axion images
    ood = json.loads(meta["deeplense.ood"])
    assert ood["fit_images"] == 22 and ood["calibration_images"] == 2

    # the file evaluates as the run does, in dex
    out = _invoke(["evaluate", str(onnx_path), "--dataset", "Model_III", "--data-root",
                   str(sim_root), "--json"])  # fmt: skip
    by_file = json.loads(out[out.index("{") :])
    out = _invoke(["evaluate", str(mass_run), "--json"])
    evaluated = json.loads(out[out.index("{") :])
    assert by_file["task"] == "axion-mass" and by_file["n"] == evaluated["n"] == 8
    assert by_file["mae"] == pytest.approx(evaluated["mae"], abs=1e-4)
    assert "ood" not in by_file and "ood" not in evaluated  # no class accuracy to split
    assert (Path(by_file["out_dir"]) / "mass_scatter.png").exists()

    axions = sim_root / "Model_III_test" / "axion"
    by_onnx, by_run = tmp_path / "onnx.csv", tmp_path / "run.jsonl"
    _invoke(["predict", str(onnx_path), str(axions), "-o", str(by_onnx)])
    _invoke(["predict", str(mass_run), str(axions), "-o", str(by_run)])
    with open(by_onnx) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["path", "predicted", "log10_axion_mass", "axion_mass_ev"]
    records = [json.loads(line) for line in by_run.read_text().splitlines()]
    assert len(rows) == len(records) == 8
    for row, record in zip(rows, records, strict=True):
        assert row["path"] == record["path"]
        assert float(row["log10_axion_mass"]) == pytest.approx(record["log10_axion_mass"], abs=1e-3)
        assert record["axion_mass_ev"] == pytest.approx(10 ** record["log10_axion_mass"])
        assert "probabilities" not in record
        assert row["in_distribution"] in ("true", "false")
        assert isinstance(record["in_distribution"], bool)
    predicted = np.array([r["log10_axion_mass"] for r in records])
    truth = np.log10([r["axion_mass"] for r in records])  # the mass each file carries
    assert np.abs(predicted - truth).mean() == pytest.approx(evaluated["mae"], abs=1e-4)


def test_predict_adds_the_mass_to_a_classifiers_axions(
    mass_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """predict CLASSIFIER --mass-model REGRESSOR: the class of every image, and the mass of
    those called axion, as the regressor alone gives it; a row is in distribution only when
    both models' detectors say so."""
    test = sim_root / "Model_III_test"
    chained, alone, classes = (tmp_path / f"{n}.csv" for n in ("chain", "mass", "class"))
    _invoke(["predict", "Model_III", str(test), "--mass-model", str(mass_run), "-o", str(chained)])
    _invoke(["predict", str(mass_run), str(test), "-o", str(alone)])
    _invoke(["predict", "Model_III", str(test), "-o", str(classes)])
    rows, by_mass, by_class = (list(csv.DictReader(f.open())) for f in (chained, alone, classes))
    assert list(rows[0]) == ["path", "predicted", "p_axion", "p_cdm", "p_no_sub",
                             "log10_axion_mass", "axion_mass_ev", "in_distribution",
                             "ood_score"]  # fmt: skip
    assert len(rows) == len(by_mass) == len(by_class) == 24
    axions = [r for r in rows if r["predicted"] == "axion"]
    assert sum("/axion/" in r["path"] for r in axions) >= 6  # the shipped classifier finds them
    for row, mass, cls in zip(rows, by_mass, by_class, strict=True):
        assert row["path"] == mass["path"] == cls["path"]
        assert row["predicted"] == cls["predicted"] and row["p_cdm"] == cls["p_cdm"]
        if row["predicted"] == "axion":
            assert float(row["log10_axion_mass"]) == pytest.approx(
                float(mass["log10_axion_mass"]), abs=1e-4
            )
            both = cls["in_distribution"] == mass["in_distribution"] == "true"
            assert row["in_distribution"] == str(both).lower()
        else:
            assert row["log10_axion_mass"] == row["axion_mass_ev"] == ""
            assert row["in_distribution"] == cls["in_distribution"]
    out = _invoke(["predict", "Model_III", str(test / "axion"), "--mass-model", str(mass_run),
                   "--json"])  # fmt: skip
    doc = json.loads(out[out.index("{") :])
    assert doc["mass_model"].startswith("ResNet18 (PyTorch")  # the run's model
    called = [p for p in doc["predictions"] if p["predicted"] == "axion"]
    assert called and all("log10_axion_mass" in p and "probabilities" in p for p in called)


def test_a_mass_model_must_be_a_regressor_after_a_classifier(
    mass_run: Path, trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    test, out = str(sim_root / "Model_III_test"), tmp_path / "p.csv"
    cases = [
        (["Model_III", test, "--mass-model", str(trained_run)], "classifies; give an axion-mass"),
        ([str(mass_run), test, "--mass-model", str(mass_run)], "already an axion-mass model"),
        # Model_I reads 150 x 150 images
        (["Model_I", test, "--mass-model", str(mass_run)], "use two models of the same dataset"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["predict", *args, "-o", str(out)])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()


def test_int8_regressor_is_judged_in_dex(mass_run: Path, sim_root: Path, tmp_path: Path) -> None:
    """int8 rounds every activation: the file is held to a mean |ONNX - PyTorch| in dex (not a
    top class, which a one-output model does not have) and predicts masses near fp32's."""
    import onnx

    from deeplense_cli.deploy.mass_export import INT8_MAE_SHARE, INT8_MEAN_DEX

    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    _invoke(["export", "onnx", str(mass_run), "-o", str(fp32)])
    out = _invoke(["export", "onnx", str(mass_run), "--precision", "int8", "-o", str(int8)])
    assert "log10 axion mass: ONNX within" in out
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["deeplense.precision"] == "int8" and meta["deeplense.task"] == "axion-mass"
    check = json.loads(meta["deeplense.validation"])["regression"]
    allowed = max(INT8_MEAN_DEX, INT8_MAE_SHARE * check["mae_dex_torch"])
    assert 0 < check["mean_abs_error_dex"] <= check["mean_tolerance_dex"] == allowed
    assert check["max_abs_error_dex"] >= check["mean_abs_error_dex"]

    axions = sim_root / "Model_III_test" / "axion"
    masses = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        _invoke(["predict", str(path), str(axions), "-o", str(tmp_path / f"{name}.jsonl")])
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        masses[name] = np.array([json.loads(line)["log10_axion_mass"] for line in lines])
    assert len(masses["int8"]) == 8
    assert np.abs(masses["int8"] - masses["fp32"]).mean() <= allowed


def test_an_int8_regressor_too_far_from_pytorch_is_not_written() -> None:
    from deeplense_cli.deploy.mass_export import INT8_MEAN_DEX, check_masses

    meta = {"deeplense.target": json.dumps(TargetScaling(mean=-23.0, std=0.5).record())}
    reference = np.zeros((4, 1), dtype=np.float32)
    near = reference + INT8_MEAN_DEX / 0.5 / 2  # half the allowance, in standardised units
    assert check_masses(meta, "int8", reference, near, None)["mean_abs_error_dex"] == (
        pytest.approx(INT8_MEAN_DEX / 2)
    )
    far = reference.copy()
    far[0] = 4 * INT8_MEAN_DEX / 0.5 * 2  # one image 8x off: 2x the allowance on average
    with pytest.raises(DeepLenseError, match=r"on average 0.04 dex \(allowed: 0.02\)"):
        check_masses(meta, "int8", reference, far, None)
    # with the true masses known, a quarter of PyTorch's MAE where that is larger (0.05 here)
    truth = np.full(4, -23.2)  # PyTorch's outputs are -23.0: its MAE is 0.2 dex
    assert check_masses(meta, "int8", reference, far, truth)["mean_tolerance_dex"] == (
        pytest.approx(0.05)
    )
    # fp32 is held on every image, not on average
    with pytest.raises(DeepLenseError, match="by up to"):
        check_masses(meta, "fp32", reference, near, None)


@pytest.mark.slow
def test_a_short_run_beats_the_mean_predictor_clearly(tmp_path: Path) -> None:
    """900 simulated Model_III axion images, 12 epochs of ResNet-18 on one thread (~90 s):
    the test MAE is well under that of predicting the training mean (~0.46 dex here)."""
    from deeplense_cli.simulate import simulate_dataset

    root = tmp_path / "data"
    simulate_dataset(
        "Model_III", root, train_per_class=1000, test_per_class=200, seed=5, workers=1,
        classes="axion,no_sub",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    _invoke(
        ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(root),
         "--task", "axion-mass", "--run-dir", str(run_dir), "--epochs", "12",
         "--batch-size", "32", "--output", "quiet", "--num-threads", "1"]
    )  # fmt: skip
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["n"] == 200
    assert metrics["mae"] < 0.5 * metrics["mae_mean_predictor"], metrics
    assert metrics["r2"] > 0.6, metrics


# ---- tune and the Python API --------------------------------------------------------
def test_tune_compares_a_regressor_by_its_mae(sim_root: Path) -> None:
    args = ["tune", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root)]
    result = CliRunner().invoke(cli, [*args, "--task", "axion-mass", "--metric", "val_macro_auc"])
    assert result.exit_code != 0
    assert "--metric val_macro_auc is not recorded by --task axion-mass" in result.output
    result = CliRunner().invoke(cli, [*args, "--metric", "val_mae"])
    assert "--metric val_mae is not recorded by --task classify" in result.output


@pytest.mark.slow
def test_a_search_tunes_a_regressor(sim_root: Path, tmp_path: Path) -> None:
    """A real 2-trial Ray search of a regressor: its trials report val_mae, the default
    metric of --task axion-mass."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = _invoke(
        ["tune", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
         "--task", "axion-mass", "--num-samples", "2", "--max-epochs", "1", "--set",
         "train.batch_size=16", "--cpus-per-trial", "1", "--num-cpus", "2", "--name", "mass"]
    )  # fmt: skip
    assert "val_mae" in out
    trials = sorted((Path(os.environ["DEEPLENSE_HOME"]) / "runs" / "tune" / "mass").glob("runs/*"))
    assert len(trials) == 2
    for trial in trials:
        assert RunDir.open(trial).task == "axion-mass"
        assert "val_mae" in RunDir.open(trial).read_metrics()[-1]


def test_the_python_api_trains_and_predicts_the_mass(mass_run: Path, sim_root: Path) -> None:
    from deeplense_cli import api
    from deeplense_cli.data.readers import read_image

    model = api.load_model(mass_run)
    assert model.task == "axion-mass"
    files = sorted((sim_root / "Model_III_test" / "axion").glob("*.npy"))
    images = np.stack([read_image(f)[0] for f in files])
    masses = model.predict_mass(images)
    assert masses.shape == (len(files),)
    records = {}
    from deeplense_cli.deploy.predict import iter_predictions

    for pred in iter_predictions(model.predictor, files):
        records[pred.path] = pred.log10_axion_mass
    assert masses == pytest.approx([records[str(f)] for f in files], abs=1e-5)
    with pytest.raises(DeepLenseError, match=r"use Model\.predict_mass"):
        model.predict(images)
    classifier = api.load_model("Model_III")
    assert classifier.task == "classify"


def test_the_python_api_takes_the_task(sim_root: Path, tmp_path: Path) -> None:
    from deeplense_cli import api

    run = api.train(
        "resnet18", dataset="Model_III", data_root=sim_root, run_dir=tmp_path / "run",
        epochs=1, batch_size=16, num_threads=1, task="axion-mass",
    )  # fmt: skip
    assert run.evaluation is not None and run.evaluation["task"] == "axion-mass"
    assert run.evaluation["n"] == 8 and "mae" in run.evaluation


def test_a_regression_run_resumes(mass_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(mass_run, run_dir)
    before = RunDir.open(run_dir).read_record("target")
    _invoke(["train", "--resume", str(run_dir), "--epochs", "3", "--output", "quiet"])
    run = RunDir.open(run_dir)
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "val_mae" in rows[-1]
    assert run.read_record("target") == before


@pytest.mark.slow
@pytest.mark.slurm
def test_train_slurm_takes_the_task(sim_root: Path, tmp_path: Path, deeplense_home: Path) -> None:
    """`train --slurm --task axion-mass` on the real local cluster: the job trains the
    regressor and evaluates it in dex."""
    import subprocess

    from conftest import slurm_cluster_problem

    if slurm_cluster_problem() is not None:
        pytest.skip(str(slurm_cluster_problem()))
    run_dir = tmp_path / "run"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "8", "--num-threads",
            "1", "--task", "axion-mass", "--slurm", "--partition", "debug", "--cpus", "1",
            "--time", "15", "--wait"]  # fmt: skip
    try:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        run = RunDir.open(run_dir)
        assert run.task == "axion-mass"
        assert "val_mae" in run.read_metrics()[-1]
        evaluation = json.loads((run.evaluation_dir / "metrics.json").read_text())
        assert evaluation["task"] == "axion-mass" and evaluation["n"] == 8
    finally:
        ids = sorted({p.stem.split("_")[0] for p in (deeplense_home / "jobs").glob("*.json")})
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=20, check=False)


def test_a_classifier_fine_tunes_into_a_regressor(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """train --init CLASSIFIER --task axion-mass: its backbone, a new one-output head."""
    run_dir = tmp_path / "run"
    out = _invoke(
        ["train", "--init", str(trained_run), "--dataset", "Model_III", "--data-root",
         str(sim_root), "--task", "axion-mass",
         "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "16", "--num-threads",
         "1", "--no-evaluate"]
    )  # fmt: skip
    assert "head rebuilt for 1 classes (log10_axion_mass)" in " ".join(out.split())
    run = RunDir.open(run_dir)
    assert run.task == "axion-mass" and "val_mae" in run.read_metrics()[-1]
    import torch

    with torch.no_grad():
        assert tuple(run.build_model()(torch.zeros(2, 1, 64, 64)).shape) == (2, 1)


def test_a_regressor_fine_tunes_from_a_regressor_with_its_head(mass_run: Path) -> None:
    """train --init REGRESSOR --task axion-mass: every weight, the head too (its one output
    is the same target), so fine-tuning starts where the source ended."""
    import torch

    from deeplense_cli.training.init import apply_init, find_source

    source = find_source(str(mass_run))
    assert source.classes == ["log10_axion_mass"]
    # the task comes with a regressor's weights, unless one is given
    assert resolve(flags={"train": {"init": str(mass_run)}})["train"]["task"] == "axion-mass"
    given = {"train": {"init": str(mass_run), "task": "classify"}}
    assert resolve(flags=given)["train"]["task"] == "classify"
    assert resolve(flags={"train": {"init": "Model_III-axion-mass"}})["train"]["task"] == (
        "axion-mass"
    )
    net = RunDir.open(mass_run).build_model()
    for param in net.parameters():
        torch.nn.init.zeros_(param)
    assert apply_init(net, source, ["log10_axion_mass"]) == []  # nothing rebuilt
    trained = RunDir.open(mass_run).load_checkpoint("best")["model"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_an_unscaled_target_keeps_the_mean_predictor_baseline(
    sim_root: Path, tmp_path: Path
) -> None:
    """train.target_scaling=none: the model predicts log10 m itself; the mean predictor it
    is compared with is still the training mean."""
    run_dir = tmp_path / "run"
    _invoke(
        ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
         "--task", "axion-mass", "--set", "train.target_scaling=none", "--run-dir",
         str(run_dir), "--epochs", "1", *QUICK]
    )  # fmt: skip
    scaling = RunDir.open(run_dir).target_scaling
    assert (scaling.mean, scaling.std) == (0.0, 1.0)
    assert scaling.baseline is not None and -24 < scaling.baseline < -22
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    assert metrics["mae_mean_predictor"] < 1.0
