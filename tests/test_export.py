"""ONNX export: one validated self-contained file per run, every architecture, precisions,
nothing written on failure, plugin export formats."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.transforms import default_transform
from deeplense_cli.registry.manager import architectures
from deeplense_cli.runs.rundir import RunDir

CLASSES = ["axion", "cdm", "no_sub"]
# Every registered architecture exports (fp32, then fp16 and int8 from it); the default run
# covers five quick ones, --slow all the others.
FAST_ARCHITECTURES = ["ResNet18", "CCT", "T2TViT", "CaiT", "CvT"]
SLOW_ARCHITECTURES = sorted(
    {a.name for a in architectures().values()} - set(FAST_ARCHITECTURES), key=str.lower
)
# attention layers exported as ONNX Runtime's fused MultiHeadAttention (plugins' _attention)
FUSED_ATTENTION = {"CrossViT": 28, "PiT": 10, "T2TViT": 8, "CCT": 6}


def make_untrained_run(path: Path, model: str, image_size: int = 64, seed: int = 0) -> RunDir:
    """A run directory with freshly initialised weights and no data (export falls back to
    a synthetic validation batch)."""
    import torch

    from deeplense_cli.registry.manager import get_architecture

    torch.manual_seed(seed)
    arch = get_architecture(model)
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    run.write_config({"model": {"name": arch.name, "params": {}}, "data": {"dataset": None}})
    run.write_record("classes", CLASSES)
    run.write_record("transform", default_transform(image_size))
    net = arch.build(image_size=image_size, num_classes=len(CLASSES), in_channels=1)
    run.save_checkpoint("best", {"model": net.state_dict(), "epoch": 0})
    return run


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x.astype(np.float32)})[0])


def op_types(path: Path) -> tuple[list[str], int]:
    """The graph's op types, and how many Gathers take computed (not constant) indices:
    the legacy exporter's lowering of nn.Unfold."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    gathers = sum(1 for n in graph.node if n.op_type == "Gather" and n.input[1] not in constants)
    return [n.op_type for n in graph.node], gathers


def optimized_op_types(path: Path, out: Path) -> list[str]:
    """The op types of the graph ONNX Runtime runs, after deeplense's session optimised it."""
    import onnx
    import onnxruntime as ort

    from deeplense_cli.deploy.onnx_session import session_options

    options = session_options(1, optimized_model_path=out)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(out)).graph.node]


def metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_command_writes_one_validated_file(trained_run: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "onnx", str(trained_run)])
    assert result.exit_code == 0, result.output
    out = trained_run / "model.onnx"
    assert out.is_file() and not Path(f"{out}.data").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600
    # no temporary left; .lock is the run's writer lock (runs.rundir), part of its layout
    hidden = [p.name for p in trained_run.iterdir() if p.name.startswith(".")]
    assert sorted(hidden) in ([], [".lock"])
    # the figures are printed, and the run's real test images were used
    assert "max abs error" in result.output and "top class agrees" in result.output
    assert "test split" in result.output and "synthetic" not in result.output
    assert "Accuracy on these test images" in result.output

    meta = metadata(out)
    assert meta["deeplense.format"] == "deeplense-onnx/1"
    assert meta["deeplense.architecture"] == "ResNet18"
    assert json.loads(meta["deeplense.classes"]) == CLASSES
    assert json.loads(meta["deeplense.transform"]) == RunDir(trained_run).transform
    assert meta["deeplense.image_size"] == "64" and meta["deeplense.in_channels"] == "1"
    assert meta["deeplense.opset"] == "17" and meta["deeplense.precision"] == "fp32"
    assert meta["deeplense.source_run"] == str(trained_run.resolve())
    assert json.loads(meta["deeplense.contrib_ops"]) == []  # a CNN: nothing to fuse
    assert "standard ONNX operators only" in " ".join(result.output.split())
    validation = json.loads(meta["deeplense.validation"])
    assert [c["batch_size"] for c in validation["checks"]] == [1, 32]
    assert all(c["passed"] and c["max_abs_error"] < 1e-3 for c in validation["checks"])


def test_exported_model_has_a_dynamic_batch_and_matches_pytorch(trained_run: Path) -> None:
    import torch

    from deeplense_cli.deploy.export import export_onnx

    out = trained_run / "dyn.onnx"
    result = export_onnx(trained_run, output=out, validation_images=16)
    assert result.real_data and result.accuracy_onnx == result.accuracy_torch
    model = RunDir(trained_run).build_model("best")
    rng = np.random.default_rng(0)
    for n in (1, 3, 7):
        x = rng.random((n, 1, 64, 64), dtype=np.float32)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ort_logits(out, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "model",
    FAST_ARCHITECTURES + [pytest.param(m, marks=pytest.mark.slow) for m in SLOW_ARCHITECTURES],
)
def test_every_architecture_exports(model: str, tmp_path: Path) -> None:
    from deeplense_cli.deploy.export import export_onnx

    run = make_untrained_run(tmp_path / model, model)
    result = export_onnx(run.path, validation_images=8)
    assert result.path == run.path / "model.onnx" and result.path.is_file()
    assert not result.real_data and "synthetic" in result.notes[0]
    assert [c.batch_size for c in result.checks] == [1, 32]
    assert all(c.passed and c.max_abs_error < 1e-3 for c in result.checks)
    assert metadata(result.path)["deeplense.architecture"].lower() == model.lower()
    ops, index_gathers = op_types(result.path)
    # einsums become MatMuls (onnx_graph), nn.Unfold a convolution (export_modules);
    # CCT's sequence pooling 'b n, b n d -> b d' is the one einsum left as it is
    assert ops.count("Einsum") <= (1 if model == "CCT" else 0)
    if model in ("T2TViT", "PiT"):  # the nn.Unfold users
        assert index_gathers == 0, "nn.Unfold was exported as gathers of computed indices"
    assert ops.count("MultiHeadAttention") == FUSED_ATTENTION.get(model, 0)
    assert json.loads(metadata(result.path)["deeplense.contrib_ops"]) == (
        ["com.microsoft.MultiHeadAttention"] if model in FUSED_ATTENTION else []
    )
    x = np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32)
    assert ort_logits(result.path, x).shape == (5, 3)
    # every GELU reaches ONNX Runtime in a form it fuses (onnx_graph.reorder_gelu)
    assert "Erf" not in optimized_op_types(result.path, tmp_path / "optimized.onnx")
    check_lower_precisions(result.path, tmp_path)


def test_standard_ops_exports_attention_without_onnx_runtime_operators(tmp_path: Path) -> None:
    """``--standard-ops``: the same model in standard ONNX operators only (for runtimes other
    than ONNX Runtime), validated the same way; the default uses the fused node and says so."""
    import onnx

    run = make_untrained_run(tmp_path / "cct", "CCT")
    fused, plain = tmp_path / "fused.onnx", tmp_path / "plain.onnx"
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "onnx", str(run.path), "-o", str(fused)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines
    assert "ONNX Runtime operators com.microsoft.MultiHeadAttention" in text
    result = runner.invoke(
        cli, ["export", "onnx", str(run.path), "-o", str(plain), "--standard-ops"]
    )
    assert result.exit_code == 0, result.output
    assert "standard ONNX operators only" in " ".join(result.output.split())
    model = onnx.load(str(plain))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    assert json.loads(metadata(plain)["deeplense.contrib_ops"]) == []
    ops, _ = op_types(plain)
    # one Softmax per attention layer, plus the sequence pooling's
    assert ops.count("Softmax") == FUSED_ATTENTION["CCT"] + 1 and "MultiHeadAttention" not in ops
    x = np.random.default_rng(3).random((4, 1, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(ort_logits(plain, x), ort_logits(fused, x), rtol=1e-4, atol=1e-5)


def test_a_failed_first_exporter_prints_nothing(tmp_path: Path, capfd) -> None:
    """When the TorchScript exporter fails (here on a LayerNorm whose shape is computed at run
    time, as in CrossFormer's and TwinsSVT's stages) PyTorch's C++ side prints the whole graph
    to the process's stdout, thousands of lines for a real model; the export keeps the
    process's own file descriptors quiet and falls back to the dynamo exporter."""
    import torch
    import torch.nn.functional as F

    from deeplense_cli.deploy.export import export_fp32

    class RuntimeShapeNorm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 8, stride=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x).permute(0, 2, 3, 1)
            return F.layer_norm(y, (y.shape[-1],)).mean((1, 2))

    capfd.readouterr()
    x = np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32)
    kind, _ = export_fp32(RuntimeShapeNorm().eval(), x, tmp_path / "m.onnx")
    out, err = capfd.readouterr()
    assert kind == "dynamo" and (tmp_path / "m.onnx").is_file()
    assert "Torch IR graph" not in out + err and len(out + err) < 500, (out + err)[:500]
    print("still printing")  # the descriptors are restored
    assert capfd.readouterr().out == "still printing\n"


def check_lower_precisions(fp32: Path, tmp_path: Path) -> None:
    """fp16 conversion and static QDQ int8 work on this graph (TwinsSVT's shared LayerNorm
    gains once made ONNX Runtime's quantizer fail). fp16 must meet its tolerance against the
    fp32 model; untrained weights on synthetic images decide their top class by hairbreadths,
    so int8 agreement is not asserted here (the trained-run test does)."""
    import onnx

    from deeplense_cli.deploy.precision import convert_fp16, quantize_int8
    from deeplense_cli.deploy.validate import validate

    x = np.random.default_rng(2).random((8, 1, 64, 64), dtype=np.float32)
    reference = ort_logits(fp32, x)
    half = tmp_path / "fp16.onnx"
    convert_fp16(fp32, half)
    checks, _ = validate(half, reference, x, "fp16", batch_sizes=(1, 8))
    assert all(c.passed for c in checks), checks
    weights = onnx.load(str(half)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    int8 = tmp_path / "int8.onnx"
    work = tmp_path / "int8-work"
    work.mkdir()
    quantize_int8(fp32, int8, x, work)
    ops, _ = op_types(int8)
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    out = ort_logits(int8, x)
    assert out.shape == (8, 3) and np.isfinite(out).all()


@pytest.mark.slow
def test_a_failing_int8_quantisation_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the unsharing, ONNX Runtime's quantizer really fails on TwinsSVT's graph: the
    user gets one line, no traceback, and no file (the per-architecture export test checks
    that the unsharing makes it succeed)."""
    from deeplense_cli.deploy import onnx_graph

    monkeypatch.setattr(onnx_graph, "unshare_vectors", lambda model: 0)
    run = make_untrained_run(tmp_path / "twins", "TwinsSVT")
    before = sorted(p.name for p in run.path.iterdir())
    result = CliRunner().invoke(cli, ["export", "onnx", str(run.path), "--precision", "int8"])
    assert result.exit_code != 0
    assert "int8 quantisation of this model failed" in result.output
    assert "export it as fp32 instead" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in run.path.iterdir()) == before


def test_fp16_export_is_half_the_size_with_float32_io(trained_run: Path) -> None:
    import onnxruntime as ort

    result = CliRunner().invoke(
        cli, ["export", "onnx", str(trained_run), "--precision", "fp16", "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    half = Path(info["path"])
    assert half == trained_run / "model-fp16.onnx"
    assert all(c["passed"] for c in info["checks"])
    fp32 = trained_run / "model.onnx"
    if not fp32.exists():
        CliRunner().invoke(cli, ["export", "onnx", str(trained_run)])
    assert 0.4 < half.stat().st_size / fp32.stat().st_size < 0.6
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    assert metadata(half)["deeplense.precision"] == "fp16"


def test_int8_export_is_smaller_and_reports_the_accuracy_change(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(trained_run)  # a relative -o, and nothing stray left in the cwd
    before = sorted(p.name for p in trained_run.iterdir())
    result = CliRunner().invoke(
        cli, ["export", "onnx", str(trained_run), "--precision", "int8", "-o", "model-int8.onnx"]
    )
    assert result.exit_code == 0, result.output
    after = sorted(p.name for p in trained_run.iterdir())
    assert sorted({*before, "model-int8.onnx"}) == after
    assert "Accuracy on these test images" in result.output and "points" in result.output
    int8 = trained_run / "model-int8.onnx"
    size = int8.stat().st_size
    assert size < 0.35 * 44_000_000  # ResNet-18 fp32 is ~44.7 MB
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic
    assert metadata(int8)["deeplense.int8_scheme"] == "u8s8-7bit"
    assert "int8 scheme: u8s8-7bit" in result.output
    assert "decides" in result.output  # the column of images PyTorch decides
    assert max_int8_weight(int8) <= 64  # 7-bit weights: no saturation on CPUs without VNNI


def max_int8_weight(path: Path) -> int:
    """The largest |value| of the model's int8 weight initializers."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer]
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.dtype == np.int8)


def test_int8_scheme_with_full_8bit_weights(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplense_cli.deploy import predict

    out = tmp_path / "u8s8.onnx"
    args = ["export", "onnx", str(trained_run), "--precision", "int8", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--int8-scheme", "u8s8", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["int8_scheme"] == "u8s8" and metadata(out)["deeplense.int8_scheme"] == "u8s8"
    assert max_int8_weight(out) > 64  # the full int8 range
    assert all(c["judged_images"] is not None for c in info["checks"])
    # predict warns when such a file runs on an x86 CPU without VNNI, and only there
    image = tmp_path / "image.npy"
    np.save(image, np.random.default_rng(0).random((64, 64)))
    for flags, warned in (({"avx2", "fma"}, True), ({"avx2", "avx512_vnni"}, False)):
        monkeypatch.setattr(predict, "cpu_flags", lambda flags=flags: set(flags))
        result = CliRunner().invoke(cli, ["predict", str(out), str(image)])
        assert result.exit_code == 0, result.output
        assert ("Warning: u8s8.onnx is int8 with 8-bit weights" in result.output) is warned


def test_int8_scheme_needs_int8_precision(trained_run: Path) -> None:
    before = sorted(os.listdir(trained_run))
    args = ["export", "onnx", str(trained_run), "--int8-scheme", "u8u8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--int8-scheme applies to --precision int8, not fp32" in result.output
    assert sorted(os.listdir(trained_run)) == before  # nothing written


def test_int8_is_judged_on_the_images_pytorch_decides() -> None:
    from deeplense_cli.deploy.validate import near_ties

    # p = (0.5, 0.49, ...): a near-tie; (0.88, 0.12, 0): decided
    logits = np.log(np.array([[0.5, 0.49, 0.01], [0.88, 0.119, 0.001], [0.2, 0.7, 0.1]]))
    assert near_ties(logits).tolist() == [True, False, False]
    assert near_ties(np.array([[3.0, 3.0, 3.0]])).tolist() == [True]


def test_int8_tolerance_text_names_the_near_tie_rule() -> None:
    from deeplense_cli.deploy.validate import tolerance_text

    text = tolerance_text("int8", 0.9)
    assert "90% of the images PyTorch decides" in text and "5% of probability" in text


def test_failed_validation_writes_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplense_cli.deploy import export, validate

    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_text("the previous export")
    # a tolerance no real export can meet: the fp32 graph differs from PyTorch by ~1e-7
    monkeypatch.setitem(validate.TOLERANCES, "fp32", (0.0, 0.0))
    with pytest.raises(DeepLenseError, match=r"does not match PyTorch.*nothing was written") as err:
        export.export_onnx(trained_run, output=target, validation_images=4)
    # auto tried both exporters before giving up
    assert "legacy exporter:" in str(err.value) and "dynamo exporter:" in str(err.value)
    assert target.read_text() == "the previous export"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]
    # int8 is judged by top-class agreement; demanding more than 100% must fail too
    with pytest.raises(DeepLenseError, match="does not match PyTorch"):
        export.export_onnx(
            trained_run,
            output=tmp_path / "q.onnx",
            precision="int8",
            min_agreement=1.01,
            exporter="legacy",
        )
    assert not (tmp_path / "q.onnx").exists()


def test_export_errors_are_one_line(trained_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    not_run = runner.invoke(cli, ["export", "onnx", str(tmp_path)])
    assert not_run.exit_code == 1 and "not a deeplense run directory" in not_run.output
    bad_name = runner.invoke(cli, ["export", "onnx", str(trained_run), "-o", str(tmp_path / "m")])
    assert bad_name.exit_code == 1 and "must end in .onnx" in bad_name.output
    bad_opset = runner.invoke(cli, ["export", "onnx", str(trained_run), "--opset", "3"])
    assert bad_opset.exit_code == 1 and "opset 3" in bad_opset.output
    for r in (not_run, bad_name, bad_opset):
        assert "Traceback" not in r.output


def test_missing_onnxruntime_says_how_to_install(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    result = CliRunner().invoke(cli, ["export", "onnx", str(trained_run)])
    assert result.exit_code == 1
    assert "ONNX Runtime is not installed: pip install 'deeplense[cpu]'" in result.output
    assert "'[gpu]' on CUDA machines" in result.output


PLUGIN = """
    import click
    from deeplense_cli import hookimpl

    @hookimpl
    def register_export_formats(register):
        @click.command()
        @click.argument("run_dir")
        def fake(run_dir):
            "Export to the fake format."
            click.echo(f"fake export of {run_dir}")

        register("fakefmt", fake)
        register("onnx", fake)  # may not replace the built-in format
        register("Bad Name!", fake)
"""


def test_plugins_register_export_formats(fake_plugin, tmp_path: Path) -> None:
    fake_plugin("exporter", PLUGIN)
    runner = CliRunner()
    listing = runner.invoke(cli, ["export", "--help"])
    assert listing.exit_code == 0, listing.output
    assert "onnx" in listing.output and "fakefmt" in listing.output
    result = runner.invoke(cli, ["export", "fakefmt", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"fake export of {tmp_path}" in result.output
    # the built-in onnx command was not replaced by the plugin's
    onnx_help = runner.invoke(cli, ["export", "onnx", "--help"])
    assert "--precision" in onnx_help.output
    unknown = runner.invoke(cli, ["export", "nope", str(tmp_path)])
    assert unknown.exit_code != 0 and "No such command" in unknown.output
