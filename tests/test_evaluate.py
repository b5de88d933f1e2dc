"""Evaluation: metric correctness, the evaluate command, and its error cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.evaluation.metrics import (
    axion_mass_bins,
    classification_metrics,
    roc_curves,
    softmax,
)

CLASSES = ["axion", "cdm", "no_sub"]


def test_metrics_match_sklearn_on_softmax_probabilities() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[labels]
    probs = softmax(logits)
    m = classification_metrics(labels, probs, CLASSES)
    onehot = np.eye(3)[labels]
    for i, c in enumerate(CLASSES):
        assert m["auc"][c] == pytest.approx(roc_auc_score(onehot[:, i], probs[:, i]))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["micro_auc"] == pytest.approx(roc_auc_score(onehot, probs, average="micro"))
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 300 and np.trace(cm) == round(m["accuracy"] * 300)
    for i, c in enumerate(CLASSES):
        assert m["recall"][c] == pytest.approx(cm[i, i] / cm[i].sum())
        assert m["precision"][c] == pytest.approx(cm[i, i] / cm[:, i].sum())


def test_perfect_and_missing_class_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(labels, probs, CLASSES)
    assert m["accuracy"] == 1.0 and m["auc"]["axion"] == 1.0
    assert m["auc"]["no_sub"] is None  # undefined without positives, not a fake number
    assert m["recall"]["no_sub"] is None and m["precision"]["no_sub"] is None
    curves = roc_curves(labels, probs, CLASSES)
    assert "no_sub" not in curves and {"axion", "cdm", "micro", "macro"} <= set(curves)


def test_axion_mass_bins_count_what_each_mass_range_was_taken_for() -> None:
    # axion images (label 0) at four masses; cdm/no_sub images carry no mass (NaN)
    mass = np.array([2e-24, 2.5e-24, 5e-24, 2e-23, 9e-23, np.nan, np.nan])
    labels = np.array([0, 0, 0, 0, 0, 1, 2])
    pred = np.array([1, 0, 0, 0, 2, 1, 2])
    bins = axion_mass_bins(labels, pred, mass, CLASSES)
    assert [(b["log10_mass_min"], b["log10_mass_max"]) for b in bins] == [
        (-24.0, -23.5), (-23.5, -23.0), (-23.0, -22.5), (-22.5, -22.0)
    ]  # fmt: skip
    assert [b["n"] for b in bins] == [2, 1, 1, 1]
    assert bins[0]["recall"] == 0.5 and bins[0]["predicted"] == {"axion": 1, "cdm": 1, "no_sub": 0}
    assert bins[3]["recall"] == 0.0 and bins[3]["predicted"]["no_sub"] == 1
    # the simulator's vortex: half-length 0.03e-22 / m_a arcsec (3" at 1e-24 eV)
    assert bins[0]["vortex_half_length_arcsec"] == pytest.approx([0.03e-22 / 10**-23.5, 3.0])
    # a mass exactly on the top edge lands in the last bin, not in a bin of its own
    edge = axion_mass_bins(np.array([0, 0]), np.array([0, 0]), np.array([1e-24, 1e-22]), CLASSES)
    assert [b["n"] for b in edge] == [1, 1] and edge[-1]["log10_mass_max"] == -22.0
    assert axion_mass_bins(labels[5:], pred[5:], mass[5:], CLASSES) == []


def test_evaluate_command_writes_metrics_and_plots(trained_run: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", str(trained_run), "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)
    assert m["n"] == 24 and m["checkpoint"] == "best" and m["checkpoint_epoch"] == 1
    out = Path(m["out_dir"])
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == m["accuracy"]
    assert (out / "roc.png").stat().st_size > 1000 and (
        out / "confusion_matrix.png"
    ).stat().st_size > 1000
    # the simulated axion test images carry their axion mass: recall per mass bin
    bins = m["axion_mass_bins"]
    axion_row = np.array(m["confusion_matrix"])[CLASSES.index("axion")]
    assert sum(b["n"] for b in bins) == axion_row.sum()
    assert sum(b["predicted"]["axion"] for b in bins) == axion_row[0]
    assert all(-24.0 <= b["log10_mass_min"] < b["log10_mass_max"] <= -22.0 for b in bins)
    assert (out / "axion_mass.png").stat().st_size > 1000
    table = CliRunner().invoke(cli, ["evaluate", str(trained_run), "--split", "val"])
    assert table.exit_code == 0, table.output
    assert "macro" in table.output and "accuracy" in table.output
    assert "Axion images by axion mass" in table.output and "axion_mass.png" in table.output


def test_evaluate_on_external_folder_and_class_mismatch(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    ok = CliRunner().invoke(
        cli, ["evaluate", str(trained_run), "--data", str(sim_root / "Model_III_test"), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["n"] == 24
    other = tmp_path / "two_classes"
    for c in ("cdm", "no_sub"):
        shutil.copytree(sim_root / "Model_III_test" / c, other / c)
    bad = CliRunner().invoke(cli, ["evaluate", str(trained_run), "--data", str(other)])
    assert bad.exit_code == 1
    assert "classes" in bad.output and "Traceback" not in bad.output


def test_data_without_axion_masses_has_no_mass_bins(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """Axion files holding a bare image (no mass): no bins, and no stale plot left behind."""
    from deeplense_cli.data.readers import read_image

    runner = CliRunner()
    out = tmp_path / "evaluation"  # both evaluations here (by default each has its own)
    with_mass = runner.invoke(
        cli,
        ["evaluate", str(trained_run), "--data", str(sim_root / "Model_III_test"), "--json",
         "--out", str(out)],
    )  # fmt: skip
    assert with_mass.exit_code == 0, with_mass.output
    assert json.loads(with_mass.output)["out_dir"] == str(out)
    assert (out / "axion_mass.png").exists()
    bare = tmp_path / "bare"
    shutil.copytree(sim_root / "Model_III_test", bare)
    for f in (bare / "axion").glob("*.npy"):
        image, mass = read_image(f)
        assert mass is not None
        np.save(f, np.asarray(image))
    without = runner.invoke(
        cli, ["evaluate", str(trained_run), "--data", str(bare), "--json", "--out", str(out)]
    )
    assert without.exit_code == 0, without.output
    m = json.loads(without.output)
    assert m["out_dir"] == str(out) and "axion_mass_bins" not in m
    assert not (out / "axion_mass.png").exists()
    assert "axion_mass_bins" not in json.loads((out / "metrics.json").read_text())


def test_evaluate_errors_are_one_line(trained_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    not_run = runner.invoke(cli, ["evaluate", str(tmp_path)])
    assert not_run.exit_code == 1 and "not a deeplense run directory" in not_run.output
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / "checkpoints" / "best.pt").write_bytes(b"garbage, not a checkpoint")
    corrupt = runner.invoke(cli, ["evaluate", str(copy)])
    assert corrupt.exit_code == 1 and "cannot load checkpoint" in corrupt.output
    assert "Traceback" not in corrupt.output


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_batch_size_below_one_is_one_line_for_a_run_and_the_api(
    trained_run: Path, size: str
) -> None:
    from deeplense_cli import api
    from deeplense_cli.core.errors import DeepLenseError

    res = CliRunner().invoke(cli, ["evaluate", str(trained_run), "--batch-size", size])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: --batch-size must be a whole number >= 1, got {size}" in res.output
    with pytest.raises(DeepLenseError, match="--batch-size must be a whole number >= 1"):
        api.evaluate(trained_run, batch_size=int(size))


def test_checkpoints_refuse_pickled_code(trained_run: Path, tmp_path: Path) -> None:
    """A checkpoint carrying a pickle payload must not run it (weights_only loading)."""
    import pickle

    marker = tmp_path / "pwned"
    copy = tmp_path / "evil"
    shutil.copytree(trained_run, copy)

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    import torch

    torch.save(
        {"format": "deeplense-checkpoint/1", "model": Evil()},
        copy / "checkpoints" / "best.pt",
        pickle_module=pickle,
    )
    result = CliRunner().invoke(cli, ["evaluate", str(copy)])
    assert result.exit_code == 1 and "cannot load checkpoint" in result.output
    assert "holds Python objects besides tensors" in result.output
    assert "weights_only" not in result.output  # PyTorch's advice to load it unsafely
    assert not marker.exists()


def test_evaluate_refuses_a_checkpoint_with_non_finite_outputs(
    trained_run: Path, tmp_path: Path
) -> None:
    """A diverged checkpoint (NaN weights): one line, exit 1, nothing written (the NaN
    probabilities used to reach sklearn's AUC and end in a traceback)."""
    from deeplense_cli.runs.rundir import RunDir

    copy = tmp_path / "nan"
    shutil.copytree(trained_run, copy)
    run = RunDir.open(copy)
    state = run.load_checkpoint("best")
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first].fill_(float("nan"))
    run.save_checkpoint("best", {k: v for k, v in state.items() if k != "format"})
    shutil.rmtree(copy / "evaluation", ignore_errors=True)
    result = CliRunner().invoke(cli, ["evaluate", str(copy)])
    assert result.exit_code == 1, result.output
    assert (
        "non-finite outputs (NaN or inf)" in result.output
        and "did the run diverge" in result.output
    )
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert not (copy / "evaluation" / "metrics.json").exists()


def test_evaluate_skip_bad_leaves_out_bad_files_and_says_how_many(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """The bad-file message suggests --skip-bad: evaluate has it."""
    data = tmp_path / "test"
    shutil.copytree(sim_root / "Model_III_test", data)
    (data / "cdm" / "broken.npy").write_bytes(b"not an array")
    runner = CliRunner()
    refused = runner.invoke(cli, ["evaluate", str(trained_run), "--data", str(data)])
    assert refused.exit_code == 1 and "--skip-bad" in refused.output
    skipped = runner.invoke(
        cli, ["evaluate", str(trained_run), "--data", str(data), "--skip-bad", "--json"]
    )
    assert skipped.exit_code == 0, skipped.output
    metrics = json.loads(skipped.stdout)
    assert metrics["n"] == 24 and metrics["skipped_files"] == 1
    assert "skipped 1 bad file(s)" in skipped.stderr and "broken.npy" in skipped.stderr


def test_evaluate_takes_an_onnx_file_and_reports_what_pytorch_reports(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """Users evaluate the artifact they deploy: an export through ONNX Runtime gives the same
    metrics and figures as its run through PyTorch, on the same test folder."""
    from deeplense_cli.deploy.export import export_onnx

    model = export_onnx(trained_run, output=tmp_path / "m.onnx", validation_images=8).path
    data = ["--dataset", "Model_III", "--data-root", str(sim_root)]
    runner = CliRunner()
    torch_run = runner.invoke(cli, ["evaluate", str(trained_run), *data, "--json"])
    assert torch_run.exit_code == 0, torch_run.output
    out = tmp_path / "onnx-eval"
    onnx_run = runner.invoke(cli, ["evaluate", str(model), *data, "--out", str(out), "--json"])
    assert onnx_run.exit_code == 0, onnx_run.output
    a, b = json.loads(torch_run.output), json.loads(onnx_run.output)
    assert b["onnx"] == str(model) and b["n"] == a["n"] == 24
    assert b["confusion_matrix"] == a["confusion_matrix"]
    assert b["macro_auc"] == pytest.approx(a["macro_auc"], abs=1e-3)
    for name in ("metrics.json", "roc.png", "confusion_matrix.png", "axion_mass.png"):
        assert (out / name).is_file()
    rich = runner.invoke(cli, ["evaluate", str(model), *data, "--out", str(out)])
    assert rich.exit_code == 0 and "macro" in rich.output
    # an ONNX file has no data of its own
    result = runner.invoke(cli, ["evaluate", str(model)])
    assert result.exit_code == 1 and "carries no data of its own" in result.output
    result = runner.invoke(cli, ["evaluate", str(tmp_path / "missing.onnx"), *data])
    assert result.exit_code == 1 and "neither a file nor a shipped model" in result.output
