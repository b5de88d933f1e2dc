"""Test-time augmentation over the half turn: predict, evaluate and exports that ask for it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.data.readers import find_images, read_image
from deeplense_cli.data.transforms import apply_transform
from deeplense_cli.deploy.onnx_session import OnnxModel
from deeplense_cli.evaluation.metrics import softmax
from deeplense_cli.registry import pretrained


def _invoke(*args: object) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_predict_rot180_averages_the_logits_of_each_image_and_its_half_turn(
    sim_root: Path, tmp_path: Path
) -> None:
    folder = sim_root / "Model_III_test"
    out = tmp_path / "p.csv"
    res = _invoke("predict", "Model_II", folder, "--tta", "rot180", "-o", out)
    assert res.exit_code == 0, res.output
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    model = OnnxModel(pretrained.shipped_models()["model_ii"].path, device="cpu")
    files = find_images([folder])
    x = apply_transform(np.stack([read_image(f)[0][None] for f in files]), model.transform)
    plain, scores = model.outputs(x)
    turned, _ = model.outputs(np.ascontiguousarray(x[..., ::-1, ::-1]))
    want = softmax(((plain + turned) / 2).astype(np.float64))
    for f, p, score in zip(files, want, scores, strict=True):
        got = [float(rows[str(f)][c]) for c in ("p_axion", "p_cdm", "p_no_sub")]
        np.testing.assert_allclose(got, p, atol=1e-5)
        # the out-of-distribution score is the image's own
        assert float(rows[str(f)]["ood_score"]) == pytest.approx(score, rel=1e-5)


def test_evaluate_with_tta_reports_it(sim_root: Path, trained_run: Path) -> None:
    res = _invoke(
        "evaluate", "Model_III", "--data", sim_root / "Model_III_test", "--tta", "rot180", "--json"
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tta"] == "rot180"
    res = _invoke("evaluate", trained_run, "--tta", "rot180", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tta"] == "rot180"


def test_an_export_can_ask_for_tta(trained_run: Path, real_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "tta.onnx"
    res = _invoke("export", "onnx", trained_run, "-o", out, "--tta", "rot180")
    assert res.exit_code == 0, res.output
    assert OnnxModel(out, device="cpu").tta == "rot180"
    asked = _invoke("predict", out, real_samples, "--json")
    off = _invoke("predict", out, real_samples, "--json", "--tta", "none")
    assert asked.exit_code == 0 and off.exit_code == 0, asked.output + off.output
    on_doc = json.loads(asked.output[asked.output.index("{") :])
    off_doc = json.loads(off.output[off.output.index("{") :])
    assert "test-time augmentation rot180" in on_doc["model"]
    assert "test-time augmentation" not in off_doc["model"]
    assert on_doc["predictions"][0]["probabilities"] != off_doc["predictions"][0]["probabilities"]


def test_a_run_and_its_export_score_the_same_with_tta(
    trained_run: Path, sim_root: Path, tmp_path: Path
) -> None:
    """evaluate RUN --tta rot180 scores the averaged logits, as the export's evaluation does
    (it once scored the plain logits and drew the averaged ones)."""
    out = tmp_path / "m.onnx"
    assert _invoke("export", "onnx", trained_run, "-o", out).exit_code == 0
    data = sim_root / "Model_III_test"
    got = {}
    for target in (trained_run, out):
        res = _invoke("evaluate", target, "--data", data, "--tta", "rot180", "--json")
        assert res.exit_code == 0, res.output
        got[target] = json.loads(res.output)
    run_m, onnx_m = got[trained_run], got[out]
    assert run_m["loss"] == pytest.approx(onnx_m["loss"], abs=1e-4)
    assert run_m["confusion_matrix"] == onnx_m["confusion_matrix"]
    plain = json.loads(_invoke("evaluate", trained_run, "--data", data, "--json").output)
    assert plain["loss"] != pytest.approx(run_m["loss"], abs=1e-6)
    # each in its own folder: the --tta evaluation never replaces the plain one
    assert plain["out_dir"] != run_m["out_dir"]
    assert "-rot180" in Path(run_m["out_dir"]).name and "-rot180" in Path(onnx_m["out_dir"]).name
    assert json.loads((Path(plain["out_dir"]) / "metrics.json").read_text())["tta"] == "none"
