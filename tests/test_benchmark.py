"""`deeplense benchmark`: the sweep runs cells, skips finished ones and writes the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.registry.manager import architectures
from deeplense_cli.training.benchmark import Cell, plan


def test_plan_expands_models_and_datasets() -> None:
    cells = plan("all", "model_iii,Model_I")
    assert len(cells) == 2 * len(architectures())  # every registered architecture, two datasets
    assert Cell("CCT", "Model_III") in cells and Cell("Swin", "Model_I") in cells
    assert plan("cct, swin", "Model_II") == [Cell("CCT", "Model_II"), Cell("Swin", "Model_II")]
    with pytest.raises(DeepLenseError, match="unknown dataset"):
        plan("cct", "Model_IV")
    with pytest.raises(DeepLenseError, match="unknown model"):
        plan("nope", "Model_III")


def test_local_sweep_writes_table_and_skips_finished_cells(sim_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = [
        "benchmark",
        "--models",
        "resnet18,cct",
        "--datasets",
        "Model_III",
        "--out",
        str(out),
        "--data-root",
        str(sim_root),
        "--epochs",
        "3",
        "--max-minutes",
        "0.0001",
        "--batch-size",
        "16",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # each cell's summary line gives its figures to four decimals
    summaries = re.findall(r"test accuracy (\S+), macro AUC (\S+)", result.output)
    assert len(summaries) == 2, result.output
    assert all(re.fullmatch(r"\d\.\d{4}|-", v) for pair in summaries for v in pair), summaries
    table = (out / "results.md").read_text()
    assert "| ResNet18 |" in table and "| CCT |" in table and "Model_III" in table
    row = json.loads((out / "results" / "resnet18-Model_III.json").read_text())
    assert row["test_images"] == 24 and row["epochs"] == 1 and 0 <= row["accuracy"] <= 1
    assert set(row["auc"]) == {"axion", "cdm", "no_sub"} and row["train_images"] > 0
    # the machine's training speed is recorded: it decides how many epochs fit in the budget
    metrics = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in metrics]
    assert row["train_images_per_s"] == pytest.approx(history[0]["train_images_per_s"])
    assert f"| {row['train_images_per_s']:.0f} |" in table
    # axion recall per axion-mass bin, from the test images' recorded masses
    n_axion = sum(b["n"] for b in row["axion_mass_bins"])
    evaluation = json.loads((Path(row["run_dir"]) / "evaluation" / "metrics.json").read_text())
    assert n_axion == np.array(evaluation["confusion_matrix"])[0].sum() > 0
    assert "Axion recall % by log10 axion mass" in table and "| ResNet18 | Model_III | " in table
    stamp = (out / "results" / "cct-Model_III.json").stat().st_mtime_ns
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "2 already done" in " ".join(again.output.split())
    assert (out / "results" / "cct-Model_III.json").stat().st_mtime_ns == stamp
    only = CliRunner().invoke(cli, ["benchmark", "--out", str(out), "--table-only"])
    assert only.exit_code == 0 and "| CCT |" in only.output
    # a folder that is not a benchmark's: a one-line error, and no results.md written there
    empty = tmp_path / "not-a-benchmark"
    wrong = CliRunner().invoke(cli, ["benchmark", "--out", str(empty), "--table-only"])
    assert wrong.exit_code != 0 and "no finished benchmark cells" in wrong.output
    assert "Traceback" not in wrong.output and not (empty / "results.md").exists()
