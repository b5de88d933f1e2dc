"""The README's main job, end to end, at a tiny size, through a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_script_runs_end_to_end(tmp_path: Path) -> None:
    venv_bin = Path(sys.executable).parent
    env = {
        **os.environ,
        "QUICKSTART_SKIP_INSTALL": "1",
        "QUICKSTART_TRAIN": "30",
        "QUICKSTART_TEST": "10",
        "QUICKSTART_EPOCHS": "1",
        "DEEPLENSE": str(venv_bin / "deeplense"),
        "DEEPLENSE_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "quickstart.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "home" / "runs" / "quickstart-cvt"
    assert (run / "evaluation" / "metrics.json").is_file()
    assert (run / "model.onnx").is_file()
    rows = (run / "real_samples.csv").read_text().splitlines()
    assert rows[0].startswith("path") and len(rows) == 4  # header + the three real samples
    # the shipped Model_III calls each real released sample (named after its class) right
    shipped = (run / "real_samples_shipped.csv").read_text().splitlines()
    assert len(shipped) == 4
    for row in shipped[1:]:
        path, predicted = row.split(",")[:2]
        assert Path(path).stem == predicted, row
    assert "accuracy" in proc.stdout  # the metrics table was printed
    assert "Axion images by axion mass" in proc.stdout  # and the axion-mass table
