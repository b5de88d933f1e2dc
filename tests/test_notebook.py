"""examples/notebooks/tour.ipynb: stored without outputs, and runs top to bottom on a real
Jupyter kernel (this venv's Python) at a tiny size."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "notebooks" / "tour.ipynb"
KERNEL = "deeplense-tour-test"


def test_the_stored_notebook_has_no_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    assert "widgets" not in nb["metadata"]


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A kernelspec for this interpreter, found first through JUPYTER_PATH: the kernel runs
    # with this venv whatever kernels the machine has registered.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # the kernel's debugger warning
    sizes = {"TOUR_TRAIN_PER_CLASS": "20", "TOUR_TEST_PER_CLASS": "10", "TOUR_EPOCHS": "1"}
    for name, value in {**sizes, "TOUR_WORKERS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOUR_SAMPLES", str(REPO / "examples" / "real_samples"))
    work = tmp_path / "work"
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
    print(f"notebook ran in {time.perf_counter() - start:.1f} s")

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    # the example grid, learning curves, ROC, confusion matrix, axion recall by mass and the
    # two rows of real samples
    assert len(images) >= 7
    text = "".join(out.get("text", "") for out in outputs)
    assert "test accuracy" in text and "axion.npy" in text
    assert (work / "deeplense-tour" / "runs" / "tour-resnet18" / "model.onnx").is_file()
