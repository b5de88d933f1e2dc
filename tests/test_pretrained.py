"""Trained models that ship with deeplense: listing, cards, a name where a model path goes."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.deploy.onnx_session import read_model_info
from deeplense_cli.registry import pretrained


@pytest.fixture(scope="module")
def shelf(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like deeplense_cli/pretrained/: one export and its card."""
    from deeplense_cli.deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("pretrained")
    result = export_onnx(trained_run, output=folder / "Model_III.onnx", validation_images=8)
    card = {
        "name": "Model_III",
        "dataset": "Model_III",
        "architecture": "ResNet18",
        "classes": ["axion", "cdm", "no_sub"],
        "trained_on": "a test fixture",
        "config": {},
        "test_metrics": {"accuracy": 0.5, "macro_auc": 0.6, "n": 24},
        "limits": "none",
        "training": {},
    }
    (folder / "Model_III.json").write_text(json.dumps(card))
    assert result.path.is_file()
    return folder


def test_shipped_models_are_listed_and_resolved_by_name(shelf: Path) -> None:
    found = pretrained.shipped_models(shelf)
    assert list(found) == ["model_iii"]
    assert pretrained.resolve_model("model_III", shelf) == shelf / "Model_III.onnx"
    assert pretrained.resolve_model(shelf / "Model_III.onnx", shelf) == shelf / "Model_III.onnx"
    with pytest.raises(DeepLenseError, match="neither a file nor a shipped model"):
        pretrained.resolve_model("Model_IV", shelf)


def test_a_model_without_a_card_does_not_ship(shelf: Path, tmp_path: Path) -> None:
    shutil.copy(shelf / "Model_III.onnx", tmp_path / "Orphan.onnx")
    assert pretrained.shipped_models(tmp_path) == {}


def test_models_pretrained_and_predict_by_name(
    shelf: Path, real_samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pretrained, "FOLDER", shelf)
    result = CliRunner().invoke(cli, ["models", "pretrained", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["name"] == "Model_III" and row["test_accuracy"] == 0.5
    assert row["card"]["trained_on"] == "a test fixture"
    result = CliRunner().invoke(cli, ["models", "pretrained"])
    assert result.exit_code == 0 and "Model_III" in result.output
    # wide enough that the table never wraps a file name (it has an in-distribution column)
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        cli, ["predict", "model_iii", str(real_samples)]
    )
    assert result.exit_code == 0, result.output
    for name in ("no_sub.npy", "cdm.npy", "axion.npy"):
        assert name in result.output


@pytest.mark.parametrize("model", sorted(pretrained.shipped_models()))
def test_every_shipped_model_is_complete(model: str) -> None:
    """What ships has a complete card that matches its file, and fits the size budget."""
    shipped = pretrained.shipped_models()[model]
    assert set(pretrained.CARD_KEYS) <= set(shipped.card)
    info = read_model_info(shipped.path)
    assert info.classes == shipped.card["classes"]
    assert info.architecture == shipped.card["architecture"]
    assert shipped.path.stat().st_size <= 25 * 1024 * 1024


def _fresh_seed(card: dict) -> int:
    """A simulation seed that none of the commands the model was trained and tested on used."""
    used = [
        int(s) for cmd in card["trained_on"]["simulate"] for s in re.findall(r"--seed (\d+)", cmd)
    ]
    assert used, "the card must record the simulate commands with their seeds"
    return max(used) + 101


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(pretrained.shipped_models()))
def test_every_shipped_model_holds_its_accuracy_on_fresh_simulations(
    model: str, tmp_path: Path
) -> None:
    """On 400 new images per class (a seed no training used) the shipped model scores what its
    card says, within three binomial standard errors: the card is not a lucky draw."""
    shipped = pretrained.shipped_models()[model]
    dataset = shipped.card["dataset"]
    seed = _fresh_seed(shipped.card)
    regressor = shipped.task == "axion-mass"  # only axion images carry a mass
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "simulate", dataset, "--train-per-class", "0",
                                 "--test-per-class", "400", "--seed", str(seed),
                                 "--out", str(tmp_path),
                                 *(["--classes", "axion"] if regressor else [])])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["evaluate", shipped.name, "--data",
                                 str(tmp_path / f"{dataset}_test"), "--json",
                                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    if regressor:
        card = shipped.card["test_metrics"]
        assert metrics["n"] == 400
        # the standard error of a mean of |errors|: their spread, sqrt(RMSE^2 - MAE^2), / sqrt(n)
        stderr = math.sqrt(card["rmse"] ** 2 - card["mae"] ** 2) / math.sqrt(400)
        assert metrics["mae"] <= card["mae"] + 3 * stderr, (metrics["mae"], card["mae"], stderr)
        assert metrics["mae"] < 0.1 < metrics["mae_mean_predictor"]
        return
    claimed = shipped.card["test_metrics"]["accuracy"]
    n = metrics["n"]
    assert n == 1200
    stderr = math.sqrt(max(claimed * (1 - claimed), 1 / n) / n)
    assert metrics["accuracy"] >= claimed - 3 * stderr, (metrics["accuracy"], claimed, stderr)
    # AUC's standard error on 1,200 images is at most ~0.005 where the cards sit (0.98-1.0)
    assert metrics["macro_auc"] >= shipped.card["test_metrics"]["macro_auc"] - 0.015


def test_the_shipped_model_iii_classifies_the_real_released_samples(real_samples: Path) -> None:
    """The three real released Model_III images (one per class) get their own class."""
    if "model_iii" not in pretrained.shipped_models():
        pytest.skip("no Model_III model ships in this checkout")
    result = CliRunner().invoke(cli, ["predict", "Model_III", str(real_samples), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    got = {Path(row["path"]).stem: row["predicted"] for row in doc["predictions"]}
    assert got == {"axion": "axion", "cdm": "cdm", "no_sub": "no_sub"}, got
