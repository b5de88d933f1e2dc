"""Prediction from an exported .onnx (ONNX Runtime, torch-free) or a run directory (PyTorch):
outputs, streaming, size checks and --resize, providers, and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError

CLASSES = ["axion", "cdm", "no_sub"]


@pytest.fixture(scope="module")
def exported(trained_run: Path) -> tuple[Path, Path]:
    """(run directory, its model.onnx): ResNet-18 trained for one epoch on simulated data."""
    from deeplense_cli.deploy.export import export_onnx

    return trained_run, export_onnx(trained_run, validation_images=8).path


@pytest.fixture
def test_folder(sim_root: Path) -> Path:
    return sim_root / "Model_III_test"  # 3 classes x 8 .npy files


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_csv_matches_pytorch_and_counts(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    run_dir, model = exported
    runner = CliRunner()
    out_onnx, out_torch = tmp_path / "onnx.csv", tmp_path / "torch.csv"
    r1 = runner.invoke(cli, ["predict", str(model), str(test_folder), "-o", str(out_onnx)])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(
        cli, ["predict", str(run_dir), str(test_folder), "-o", str(out_torch), "--batch-size", "5"]
    )
    assert r2.exit_code == 0, r2.output
    onnx_rows, torch_rows = read_csv(out_onnx), read_csv(out_torch)
    files = sorted(str(p) for p in test_folder.rglob("*.npy"))
    assert [r["path"] for r in onnx_rows] == files == [r["path"] for r in torch_rows]
    assert list(onnx_rows[0]) == [
        "path", "predicted", "p_axion", "p_cdm", "p_no_sub", "in_distribution", "ood_score"
    ]  # fmt: skip
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        # the export's detector and the run's are fitted on the same images
        assert float(a["ood_score"]) == pytest.approx(float(b["ood_score"]), rel=1e-3)
        pa = np.array([float(a[f"p_{c}"]) for c in CLASSES])
        pb = np.array([float(b[f"p_{c}"]) for c in CLASSES])
        assert pa.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(pa, pb, atol=1e-4)
        assert a["predicted"] == CLASSES[int(pa.argmax())]
    # the summary table counts the predictions
    for c in CLASSES:
        n = sum(r["predicted"] == c for r in onnx_rows)
        assert re.search(rf"\b{c}\W+{n}\W+[0-9.]+%", r1.output), r1.output
    assert "Wrote 24 prediction(s)" in r1.output
    umask = os.umask(0)
    os.umask(umask)
    assert out_onnx.stat().st_mode & 0o777 == 0o666 & ~umask


def test_jsonl_json_and_stdout_outputs(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    _, model = exported
    runner = CliRunner()
    jsonl, js = tmp_path / "p.jsonl", tmp_path / "p.json"
    assert (
        runner.invoke(cli, ["predict", str(model), str(test_folder), "-o", str(jsonl)]).exit_code
        == 0
    )
    assert (
        runner.invoke(cli, ["predict", str(model), str(test_folder), "-o", str(js)]).exit_code == 0
    )
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines == json.loads(js.read_text())
    assert len(lines) == 24 and set(lines[0]["probabilities"]) == set(CLASSES)
    # without -o: a table on stdout; with --jsonl: JSON lines on stdout only
    table = runner.invoke(cli, ["predict", str(model), str(test_folder / "cdm")])
    assert (
        table.exit_code == 0 and "Predictions" in table.output and "predicted class" in table.output
    )
    as_jsonl = CliRunner().invoke(cli, ["predict", str(model), str(test_folder / "cdm"), "--jsonl"])
    assert as_jsonl.exit_code == 0, as_jsonl.output
    rows = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert [r["path"] for r in rows] == [r["path"] for r in lines if "/cdm/" in r["path"]]


def test_json_is_one_document_like_every_other_json_option(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    """`predict --json` printed JSON Lines while --json means one JSON document elsewhere."""
    _, model = exported
    runner = CliRunner()
    doc = runner.invoke(cli, ["predict", str(model), str(test_folder / "cdm"), "--json"])
    assert doc.exit_code == 0, doc.output
    result = json.loads(doc.stdout)  # the whole of stdout is one document
    assert result["images"] == 8 and result["classes"] == CLASSES
    assert sum(result["counts"].values()) == 8 and result["skipped"] == []
    paths = sorted(str(p) for p in (test_folder / "cdm").glob("*.npy"))
    assert [r["path"] for r in result["predictions"]] == paths
    assert set(result["predictions"][0]["probabilities"]) == set(CLASSES)
    # with -o the predictions are in the file; stdout holds the summary document
    out = tmp_path / "p.csv"
    written = runner.invoke(
        cli, ["predict", str(model), str(test_folder / "cdm"), "-o", str(out), "--json"]
    )
    assert written.exit_code == 0, written.output
    summary = json.loads(written.stdout)
    assert summary["output"] == str(out) and "predictions" not in summary
    assert len(read_csv(out)) == 8
    both = runner.invoke(cli, ["predict", str(model), str(test_folder), "--json", "--jsonl"])
    assert both.exit_code == 1 and "choose one" in both.output


def test_real_samples_and_axion_object_arrays(
    exported: tuple[Path, Path], tmp_path: Path, real_samples: Path
) -> None:
    _, model = exported
    folder = tmp_path / "mixed"
    folder.mkdir()
    image = np.load(real_samples / "cdm.npy")
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = image.astype(np.float64), 1.5e-23  # the released axion layout
    np.save(folder / "axion_obj.npy", pair, allow_pickle=True)
    np.save(folder / "plain.npy", image)
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(
        cli, ["predict", str(model), str(folder), str(real_samples), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"axion_obj.npy", "plain.npy", "axion.npy", "cdm.npy", "no_sub.npy"}
    assert rows["axion_obj.npy"]["axion_mass"] == pytest.approx(1.5e-23)
    assert "axion_mass" not in rows["plain.npy"]
    # the same pixels give the same prediction whatever the file layout
    assert rows["axion_obj.npy"]["probabilities"] == pytest.approx(
        rows["plain.npy"]["probabilities"], abs=1e-6
    )
    assert rows["cdm.npy"]["probabilities"] == pytest.approx(rows["plain.npy"]["probabilities"])


def test_size_mismatch_is_an_error_unless_resize(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = exported
    big = tmp_path / "big"
    big.mkdir()
    np.save(big / "a.npy", np.random.default_rng(0).random((80, 80), dtype=np.float32))
    runner = CliRunner()
    refused = runner.invoke(cli, ["predict", str(model), str(big)])
    assert refused.exit_code == 1 and "--resize" in refused.output and "1x64x64" in refused.output
    assert "Traceback" not in refused.output
    ok = runner.invoke(cli, ["predict", str(model), str(big), "--resize", "--json"])
    assert ok.exit_code == 0, ok.output


def test_resize_bilinear_matches_torch() -> None:
    import torch
    import torch.nn.functional as F

    from deeplense_cli.deploy.predict import resize_bilinear

    rng = np.random.default_rng(3)
    for shape, size in [((80, 80), (64, 64)), ((150, 150), (64, 64)), ((40, 50), (64, 64))]:
        img = rng.random(shape, dtype=np.float32)
        ref = F.interpolate(
            torch.from_numpy(img)[None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(resize_bilinear(img, *size), ref, atol=1e-5)


def test_streams_in_batches_and_bad_files(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from deeplense_cli.deploy.onnx_session import OnnxModel
    from deeplense_cli.deploy.predict import Summary, iter_predictions

    _, model = exported
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(23):
        np.save(folder / f"img{i:03d}.npy", rng.random((64, 64), dtype=np.float32))
    predictor = OnnxModel(model, device="cpu")
    calls: list[int] = []
    summary = Summary(model="m", device="cpu", classes=CLASSES)
    files = sorted(folder.iterdir())
    preds = iter_predictions(predictor, files, batch_size=4, summary=summary, progress=calls.append)
    first = next(preds)  # a generator: nothing beyond the first batches has been read
    assert first.path == str(files[0]) and calls == []
    rest = list(preds)
    assert [p.path for p in [first, *rest]] == [str(f) for f in files]
    assert calls == [4] * 5 + [3] and summary.images == 23
    # batching does not change the answers
    one = list(iter_predictions(predictor, files[:3], batch_size=1))
    for a, b in zip(one, [first, *rest][:3], strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)

    (folder / "img005.npy").write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "p.csv"
    runner = CliRunner()
    failed = runner.invoke(cli, ["predict", str(model), str(folder), "-o", str(out)])
    assert failed.exit_code == 1 and "img005.npy" in failed.output and "--skip-bad" in failed.output
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))  # nothing half-written
    skipped = runner.invoke(cli, ["predict", str(model), str(folder), "-o", str(out), "--skip-bad"])
    assert skipped.exit_code == 0, skipped.output
    assert len(read_csv(out)) == 22 and "Skipped" in skipped.output


def test_bad_models_are_one_line_errors(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 10)
    runner = CliRunner()
    cases = {
        str(plain): "not a deeplense export",
        str(corrupt): "not a valid ONNX model",
        str(tmp_path / "missing.onnx"): "no such model file",
    }
    for path, message in cases.items():
        result = runner.invoke(cli, ["predict", path, str(test_folder)])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    run_dir, model = exported
    trt_run = runner.invoke(
        cli, ["predict", str(run_dir), str(test_folder), "--device", "tensorrt"]
    )
    assert trt_run.exit_code == 1 and "needs an exported model" in trt_run.output
    bad_out = runner.invoke(cli, ["predict", str(model), str(test_folder), "-o", "x.txt"])
    assert bad_out.exit_code == 1 and ".csv, .jsonl or .json" in bad_out.output
    no_input = runner.invoke(cli, ["predict", str(model), str(tmp_path / "nothing")])
    assert no_input.exit_code == 1 and "no such file or folder" in no_input.output


def test_explicit_gpu_provider_never_falls_back_silently(
    exported: tuple[Path, Path], test_folder: Path
) -> None:
    import onnxruntime as ort

    from deeplense_cli.deploy.onnx_session import create_session

    _, model = exported
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "Tensorrt")):
        result = CliRunner().invoke(
            cli, ["predict", str(model), str(test_folder), "--device", device]
        )
        if provider in " ".join(ort.get_available_providers()):
            # listed: it must either really load, or fail loudly (never a CPU run)
            assert result.exit_code == 0 or "failed to load" in result.output
        else:
            assert result.exit_code == 1 and provider in result.output
            assert "Traceback" not in result.output
    session, used = create_session(model, "auto")
    assert used in ("cpu", "cuda", "tensorrt") and session.get_providers()[0].lower().startswith(
        {"cpu": "cpu", "cuda": "cuda", "tensorrt": "tensorrt"}[used]
    )


def test_a_model_this_onnx_runtime_cannot_load_is_still_named(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    """Seen on a GPU machine whose ONNX Runtime was older than its onnx package: a file the
    runtime refuses is still called what it is (a foreign model, or ours needing a newer
    runtime), not left as the runtime's error."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    plain = helper.make_model(graph)
    ours = onnx.load(str(exported[1]))
    cases = {"plain": "not a deeplense export", "ours": "needs a newer ONNX Runtime"}
    for name, proto in (("plain", plain), ("ours", ours)):
        proto.ir_version = 99  # newer than any runtime reads
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        result = CliRunner().invoke(cli, ["predict", str(path), str(test_folder)])
        assert result.exit_code == 1 and cases[name] in result.output, result.output
        assert (
            len(result.output.strip().splitlines()) == 1 and "onnxruntime_src" not in result.output
        )


class _OrtWithoutTensorRT:
    """The real onnxruntime module, except that TensorRT is listed but fails to load the way
    onnxruntime-gpu 1.31 does on a machine without TensorRT (recorded on an H200): a C++ log
    line on file descriptor 2, an "EP Error" banner on stdout, then a session on CUDA.

    A stand-in only for what this CPU machine cannot run: the GPU provider libraries."""

    def __init__(self) -> None:
        import onnxruntime

        self._real = onnxruntime

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def get_available_providers(self) -> list[str]:
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def InferenceSession(self, path: str, so: object, providers: list[object]) -> object:
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        session = self._real.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        got = [n for n in names if n != "TensorrtExecutionProvider"]
        if names[0] == "TensorrtExecutionProvider":
            os.write(2, b"\x1b[1;31m2026-12-04 14:56:35 [E:onnxruntime:Default, provider_bridge_ort.cc:2430"
                     b" operator()] Failed to load library libonnxruntime_providers_tensorrt.so with"
                     b" error: libnvinfer.so.10: cannot open shared object file: No such file or"
                     b" directory\x1b[m\n")  # fmt: skip
            print("*************** EP Error ***************")
            print(f"EP Error ... when using {providers}\nFalling back to {got} and retrying.")
        session.get_providers = lambda: got  # type: ignore[method-assign]
        return session


def test_a_gpu_provider_that_fails_to_load_is_quiet_and_named(
    exported: tuple[Path, Path],
    test_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from deeplense_cli.deploy import onnx_session

    _, model = exported
    monkeypatch.setattr(onnx_session, "import_ort", _OrtWithoutTensorRT)
    session, used = onnx_session.create_session(model, "auto")
    assert used == "cuda" and session.get_providers()[0] == "CUDAExecutionProvider"
    assert capfd.readouterr() == ("", "")  # no banner in --json output, no C++ log
    with pytest.raises(DeepLenseError) as err:
        onnx_session.create_session(model, "tensorrt")
    message = str(err.value)
    assert "libnvinfer.so.10: cannot open shared object file" in message
    assert "--device cuda" in message and "\n" not in message
    assert capfd.readouterr() == ("", "")
    print("still ours")  # the descriptors are back where they were
    os.write(2, b"fd 2 too\n")
    assert capfd.readouterr() == ("still ours\n", "fd 2 too\n")


def test_session_options() -> None:
    from deeplense_cli.deploy.onnx_session import session_options

    so = session_options(threads=3)
    assert so.intra_op_num_threads == 3
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = session_options(spinning=True)
    assert spin.intra_op_num_threads >= 1
    assert spin.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError):  # not set: ORT's default, spinning allowed
        spin.get_session_config_entry("session.intra_op.allow_spinning")


def test_predict_from_onnx_never_imports_torch(
    exported: tuple[Path, Path], test_folder: Path, tmp_path: Path
) -> None:
    _, model = exported
    out = tmp_path / "p.csv"
    code = f"""
import sys
from click.testing import CliRunner
from deeplense_cli.cli import cli
r = CliRunner().invoke(cli, ["predict", {str(model)!r}, {str(test_folder)!r}, "-o", {str(out)!r}])
assert r.exit_code == 0, r.output
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH")
    assert len(read_csv(out)) == 24


def test_missing_onnxruntime_says_how_to_install(
    exported: tuple[Path, Path], test_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = CliRunner().invoke(cli, ["predict", str(model), str(test_folder)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: ONNX Runtime is not installed: pip install 'deeplense[cpu]' "
        "(or '[gpu]' on CUDA machines)"
    )


def test_optimized_graph_cache(exported: tuple[Path, Path], deeplense_home: Path) -> None:
    import onnxruntime as ort

    from deeplense_cli.deploy.onnx_session import OnnxModel, optimized_cache_path

    _, model = exported
    x = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    cached = optimized_cache_path(ort, model)
    assert cached.parent == deeplense_home / "cache" / "onnx" and not cached.exists()
    first = OnnxModel(model, device="cpu").logits(x)  # builds the cache entry
    assert cached.is_file()
    again = OnnxModel(model, device="cpu")  # loads the cached optimised graph
    np.testing.assert_array_equal(again.logits(x), first)
    assert again.classes == CLASSES
    cached.write_bytes(b"damaged")  # a damaged entry is rebuilt, not an error
    np.testing.assert_array_equal(OnnxModel(model, device="cpu").logits(x), first)
    assert cached.stat().st_size > 1000


def test_int8_saturation_warning_on_cpus_without_vnni(tmp_path: Path) -> None:
    from deeplense_cli.deploy.onnx_session import ModelInfo, int8_saturation_warning

    def info(precision: str, **extra: str) -> ModelInfo:
        return ModelInfo(
            tmp_path / "m.onnx", "ResNet18", ["a", "b"], 64, 1, {}, precision, extra=extra
        )

    avx2, vnni = {"avx2", "fma"}, {"avx2", "avx512f", "avx512_vnni"}
    old_export = info("int8")  # before deeplense.int8_scheme: 8-bit weights
    assert "re-export with the default --int8-scheme u8s8-7bit" in str(
        int8_saturation_warning(old_export, "cpu", avx2)
    )
    assert int8_saturation_warning(info("int8", **{"deeplense.int8_scheme": "u8s8"}), "cpu", avx2)
    assert int8_saturation_warning(old_export, "cpu", vnni) is None
    assert int8_saturation_warning(old_export, "cpu", {"asimd"}) is None  # ARM
    assert int8_saturation_warning(old_export, "cuda", avx2) is None
    assert int8_saturation_warning(info("fp32"), "cpu", avx2) is None
    seven = info("int8", **{"deeplense.int8_scheme": "u8s8-7bit"})
    assert int8_saturation_warning(seven, "cpu", avx2) is None


def test_a_cropped_run_exports_and_predicts_full_size_images(
    quick_train: Any, tmp_path: Path, real_samples: Path
) -> None:
    """data.crop is part of the transform: the export and predict crop 64-px inputs the same way."""
    from deeplense_cli.deploy.export import export_onnx

    run = quick_train(tmp_path / "crop", "--epochs", "1", "--set", "data.crop=50")
    spec = run.transform
    assert (spec["image_size"], spec["crop"], spec["source_size"]) == (50, 50, 64)
    model = export_onnx(run.path, validation_images=8).path
    result = CliRunner().invoke(cli, ["predict", str(model), str(real_samples), "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.count('"predicted"') == 3
    result = CliRunner().invoke(cli, ["evaluate", str(run.path), "--json"])
    assert result.exit_code == 0, result.output
