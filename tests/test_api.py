"""The Python API (deeplense_cli.api): each public function on small real data made by the
simulator, its errors as the command line's one-line messages, and nothing that exits,
prints or imports click."""

from __future__ import annotations

import ast
import doctest
import errno
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli import api
from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.data.readers import read_image

CLASSES = ["axion", "cdm", "no_sub"]


def cli_error(*args: str) -> str:
    """The one-line error the command line prints for ``args`` (without ``Error: ``)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0].removeprefix("Error: ")


def figure_type() -> type:
    from matplotlib.figure import Figure

    return Figure


# ---- the module itself ----------------------------------------------------------------
def test_importing_the_api_loads_neither_torch_nor_the_terminal() -> None:
    code = (
        "import sys, deeplense_cli.api; "
        "print(sorted(m for m in ('torch', 'click', 'rich', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_docstring_examples_run() -> None:
    results = doctest.testmod(api, extraglobs={"api": api, "np": np})
    assert results.failed == 0
    assert results.attempted >= 8


def test_nothing_in_the_api_exits_prints_or_uses_the_terminal() -> None:
    tree = ast.parse(Path(api.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"click", "rich", "traceback", "sys"}
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not calls & {"print", "exit", "sys.exit", "quit", "os._exit"}


def test_every_public_name_is_documented_and_typed() -> None:
    import inspect

    for name in api.__all__:
        obj = getattr(api, name)
        if name in ("Progress", "DeepLenseError"):
            continue
        assert inspect.getdoc(obj), f"{name} has no docstring"
        if inspect.isfunction(obj):
            hints = inspect.get_annotations(obj)
            assert "return" in hints, f"{name} has no return type"


def test_architectures_and_pretrained_models() -> None:
    import deeplense_cli

    archs = api.architectures()
    assert list(archs) == list(deeplense_cli.architectures())
    assert {"resnet18", "cvt"} <= set(archs)
    shipped = {model.name: model for model in api.pretrained_models()}
    assert {"Model_II", "Model_III"} <= set(shipped)
    for model in shipped.values():
        assert model.path.is_file()
        if model.task == "axion-mass":  # a regressor: trained on one dataset's axions
            assert model.card["classes"] == ["axion"] and model.card["dataset"] == "Model_III"
            continue
        assert model.card["classes"] == CLASSES and model.card["dataset"] == model.name


def test_a_full_disk_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))

    monkeypatch.setattr(api, "simulate_dataset", full)
    with pytest.raises(DeepLenseError, match=r"^no space left on .* while writing .*x\.npy"):
        api.simulate("Model_III", tmp_path, train_per_class=1, test_per_class=0, workers=1)


def test_progress_must_be_none_bar_or_a_callable(tmp_path: Path) -> None:
    with pytest.raises(DeepLenseError, match="progress must be None, 'bar' or a callable"):
        api.simulate("Model_III", tmp_path, train_per_class=1, test_per_class=0, progress="rich")  # type: ignore[arg-type]


# ---- data -----------------------------------------------------------------------------
def test_simulate_writes_the_released_layout_and_resumes(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"train_per_class": 2, "test_per_class": 1, "seed": 3, "workers": 1}
    summary = api.simulate(
        "Model_III", tmp_path, classes="axion,no_sub", progress=events.append, **kw
    )
    assert summary["written"] == 6 and summary["skipped"] == 0
    assert len(list((tmp_path / "Model_III" / "axion").glob("*.npy"))) == 2
    assert len(list((tmp_path / "Model_III_test" / "no_sub").glob("*.npy"))) == 1
    assert not (tmp_path / "Model_III" / "cdm").exists()
    assert events[-1] == {"event": "simulate", "done": 6, "total": 6}
    again = api.simulate("Model_III", tmp_path, classes=["axion", "no_sub"], **kw)
    assert again["written"] == 0 and again["skipped"] == 6


def test_simulate_errors_are_the_commands(tmp_path: Path) -> None:
    for args, kw in (
        (["Model_IV"], {}),
        (["Model_III"], {"train_per_class": -1}),
        (["Model_III"], {"classes": "wimp"}),
    ):
        with pytest.raises(DeepLenseError) as exc:
            api.simulate(*args, tmp_path, **kw)
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
        assert str(exc.value) == cli_error(
            "data", "simulate", *args, "--out", str(tmp_path), *flags
        )


def test_open_dataset_by_name_and_path(sim_root: Path) -> None:
    events: list[dict[str, Any]] = []
    data = api.open_dataset("Model_III", data_root=sim_root, progress=events.append)
    assert len(data) == 72 and data.classes == CLASSES
    assert data.images.shape == (72, 1, 64, 64) and data.images.dtype == np.float32
    assert isinstance(data.images, np.memmap)  # the cache, not a copy
    assert data.counts() == {c: 24 for c in CLASSES}
    axion = data.labels == 0
    assert np.isfinite(data.axion_mass[axion]).all() and np.isnan(data.axion_mass[~axion]).all()
    assert all(p.is_file() for p in data.paths) and data.paths[0].suffix == ".npy"
    image, mass = read_image(data.paths[0])  # the cached pixels are the file's
    np.testing.assert_allclose(data.images[0, 0], image, rtol=1e-6)
    assert mass == pytest.approx(data.axion_mass[0])
    assert data.summary()["total"] == 72
    assert "72 images of 64x64 px" in repr(data)
    assert events and events[-1]["done"] == 72  # the cache was built
    grid = data.show(per_class=3)
    assert isinstance(grid, figure_type()) and len(grid.axes) == 9

    test = api.open_dataset(sim_root / "Model_III", split="test")
    assert len(test) == 24 and test.root == sim_root / "Model_III_test"


def test_open_dataset_errors(sim_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepLenseError) as exc:
        api.open_dataset("Nope", data_root=sim_root)
    assert str(exc.value) == cli_error("data", "info", "Nope", "--data-root", str(sim_root))
    test_folder = sim_root / "Model_III_test"
    with pytest.raises(DeepLenseError) as exc:
        api.open_dataset(test_folder, split="test")
    assert str(exc.value) == cli_error(
        "data", "show", str(test_folder), "--test", "-o", str(tmp_path / "g.png")
    )
    with pytest.raises(DeepLenseError, match="unknown split 'val'; use train or test"):
        api.open_dataset(test_folder, split="val")


# ---- training -------------------------------------------------------------------------
SMALL = {"epochs": 1, "batch_size": 8, "max_train_per_class": 8, "num_threads": 1}


def test_train_returns_a_run_with_history_checkpoint_and_evaluation(
    sim_root: Path, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    run = api.train(
        "resnet18",
        dataset="Model_III",
        data_root=sim_root,
        run_dir=tmp_path / "run",
        progress=events.append,
        **SMALL,
    )
    assert run.path == tmp_path / "run" and Path(run) == run.path  # a path-like
    assert run.config["train"]["epochs"] == 1 and run.config["data"]["max_train_per_class"] == 8
    assert run.model_name == "ResNet18" and run.classes == CLASSES
    (row,) = run.history
    assert row["epoch"] == 1 and {"train_loss", "val_accuracy", "val_macro_auc"} <= set(row)
    assert run.best_epoch == 1 and run.best_checkpoint.is_file()
    assert run.evaluation is not None and run.evaluation["n"] == 24
    assert [e["event"] for e in events][:2] == ["start", "batch"]
    assert [e["event"] for e in events][-2:] == ["epoch", "end"]
    assert events[0]["train"] == 21 and events[-2]["epoch"] == 1
    reopened = api.Run.open(run.path)
    assert reopened.history == run.history
    assert reopened.evaluation is not None
    assert reopened.evaluation["accuracy"] == run.evaluation["accuracy"]


def test_train_with_a_bar_a_config_and_a_dataset(
    sim_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = api.open_dataset("Model_III", data_root=sim_root)
    config = {"model": {"name": "resnet18"}, "train": {"lr": 1e-3}}
    run = api.train(
        data=data, config=config, run_root=tmp_path, evaluate=False, progress="bar", **SMALL
    )
    assert run.path.parent == tmp_path and "resnet18-Model_III" in run.path.name
    assert run.config["train"]["lr"] == 1e-3 and run.config["data"]["data"] == str(data.root)
    assert run.config["train"]["augment"] == "dihedral"  # --data: any orientation
    assert run.evaluation is None and not run.rundir.evaluation_dir.exists()
    assert "epoch 1/1" in capsys.readouterr().err
    # another run's resolved config is a valid config
    assert api.train(config=run, run_dir=tmp_path / "again", evaluate=False).config == run.config


def test_train_logs_to_the_trackers_it_is_given(sim_root: Path, tmp_path: Path) -> None:
    """``loggers=`` is ``--log``: the run's curves are in TensorBoard, read back with its own
    reader, under the experiment named."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = api.train(
        "resnet18",
        dataset="Model_III",
        data_root=sim_root,
        run_dir=tmp_path / "run",
        evaluate=False,
        loggers="TensorBoard,",
        experiment="notebook",
        **SMALL,
    )
    assert run.config["tracking"] == {"loggers": ["tensorboard"], "experiment": "notebook"}
    record = json.loads((run.path / "tracking.json").read_text())
    assert record["experiment"] == "notebook" and set(record["loggers"]) == {"tensorboard"}
    events = EventAccumulator(str(run.path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val_accuracy")]
    assert logged == [(r["epoch"], pytest.approx(r["val_accuracy"])) for r in run.history]


def test_train_errors_are_the_commands_and_leave_no_folder(sim_root: Path, tmp_path: Path) -> None:
    where = ["--dataset", "Model_III", "--data-root", str(sim_root)]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"model": "nope"}, ["-m", "nope"]),
        ({"model": "resnet18", "nope": 1}, ["-m", "resnet18", "--set", "nope=1"]),
        ({"model": "resnet18", "epochs": 0}, ["-m", "resnet18", "--epochs", "0"]),
        ({"model": "resnet18", "lr": float("nan")}, ["-m", "resnet18", "--lr", "nan"]),
        ({"model": "resnet18", "device": "cuda:7"}, ["-m", "resnet18", "--device", "cuda:7"]),
        ({"model": "resnet18", "loggers": "nope"}, ["-m", "resnet18", "--log", "nope"]),
        (
            {"model": "resnet18", "loggers": ["mlflow", "nope"]},
            ["-m", "resnet18", "--log", "mlflow,nope"],
        ),
    ]
    for kw, flags in cases:
        with pytest.raises(DeepLenseError) as exc:
            api.train(dataset="Model_III", data_root=sim_root, run_root=tmp_path / "runs", **kw)
        assert str(exc.value) == cli_error("train", *flags, *where, "--run-root", str(tmp_path))
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DeepLenseError, match=r"no data given; pass --dataset Model_III or --data"):
        api.train("resnet18", run_root=tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())  # the run folder was removed again
    taken = tmp_path / "taken"
    (taken / "file").parent.mkdir()
    (taken / "file").write_text("x")
    with pytest.raises(DeepLenseError) as exc:
        api.train("resnet18", dataset="Model_III", data_root=sim_root, run_dir=taken)
    assert str(exc.value) == cli_error("train", "-m", "resnet18", *where, "--run-dir", str(taken))
    with pytest.raises(DeepLenseError, match="is not a deeplense run directory"):
        api.Run.open(tmp_path)


# ---- evaluation and export ------------------------------------------------------------
def test_evaluate_a_run_returns_the_commands_metrics_and_figures(trained_run: Path) -> None:
    import json

    result = api.evaluate(api.Run.open(trained_run))
    assert result.out_dir == trained_run / "evaluation"
    assert set(result.figures) == {"roc", "confusion_matrix", "axion_mass"}
    assert all(isinstance(f, figure_type()) for f in result.figures.values())
    assert all((result.out_dir / f"{name}.png").is_file() for name in result.figures)
    printed = CliRunner().invoke(cli, ["evaluate", str(trained_run), "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == json.loads(json.dumps(result.metrics))
    assert result.metrics["n"] == 24 and 0 <= result.metrics["accuracy"] <= 1
    events: list[dict[str, Any]] = []
    val = api.evaluate(trained_run, split="val", progress=events.append)
    assert val.out_dir == trained_run / "evaluation-val" and events[-1]["done"] == val.metrics["n"]


def test_evaluate_an_onnx_model_on_a_dataset(sim_root: Path, tmp_path: Path) -> None:
    test = api.open_dataset("Model_III", data_root=sim_root, split="test")
    result = api.evaluate("Model_III", data=test, out=tmp_path / "eval")
    assert result.metrics["n"] == 24 and result.metrics["model"] == "CvT"
    assert result.metrics["accuracy"] >= 0.9  # the shipped model on fresh simulations
    assert result.out_dir == tmp_path / "eval" and "axion_mass" in result.figures
    with pytest.raises(DeepLenseError) as exc:
        api.evaluate("Model_III")
    assert str(exc.value) == cli_error("evaluate", "Model_III")


def test_export_onnx_then_predict_the_real_samples(
    trained_run: Path, real_samples: Path, tmp_path: Path
) -> None:
    messages: list[dict[str, Any]] = []
    export = api.export_onnx(
        api.Run.open(trained_run),
        tmp_path / "model.onnx",
        validation_images=8,
        progress=messages.append,
    )
    assert export.path == tmp_path / "model.onnx" and export.path.is_file()
    assert all(c.passed for c in export.checks)
    assert messages and messages[0]["event"] == "export"
    model = api.load_model(export.path)
    predictions = model.predict_files(real_samples)
    assert [Path(p).name for p in predictions.paths or []] == ["axion.npy", "cdm.npy", "no_sub.npy"]
    torch_model = api.load_model(trained_run)  # the run itself, on PyTorch
    images = np.stack([read_image(p)[0] for p in predictions.paths or []])
    np.testing.assert_allclose(
        torch_model.predict(images).probabilities, predictions.probabilities, atol=1e-4
    )
    with pytest.raises(DeepLenseError) as exc:
        api.export_onnx(trained_run, int8_scheme="u8u8")
    assert str(exc.value) == cli_error("export", "onnx", str(trained_run), "--int8-scheme", "u8u8")


# ---- prediction -----------------------------------------------------------------------
def test_the_shipped_model_predicts_arrays_and_files(real_samples: Path, sim_root: Path) -> None:
    model = api.load_model("Model_III")
    assert model.classes == CLASSES and model.image_size == 64 and model.device == "cpu"
    files = model.predict_files([real_samples / "no_sub.npy", real_samples / "axion.npy"])
    assert files.predicted == ["axion", "no_sub"]  # sorted by path, as `deeplense predict`
    assert files.axion_mass == [None, None]  # the real samples carry no mass
    simulated = model.predict_files(sim_root / "Model_III_test" / "axion")
    assert len(simulated) == 8 and all(m is not None for m in simulated.axion_mass or [None])
    images = np.stack([read_image(p)[0] for p in files.paths or []])
    for batch in (images, images[:, None], images.astype(np.float64)):
        arrays = model.predict(batch, batch_size=1)
        np.testing.assert_allclose(arrays.probabilities, files.probabilities, atol=1e-6)
        assert arrays.predicted == files.predicted and list(arrays.labels) == [0, 2]
    assert len(model.predict(images[0])) == 1  # one (H, W) image
    np.testing.assert_allclose(model.predict(images).probabilities.sum(axis=1), 1.0)


def test_prediction_errors_are_the_commands(real_samples: Path, tmp_path: Path) -> None:
    model = api.load_model("Model_III")
    image = read_image(real_samples / "cdm.npy")[0]
    bad = np.stack([image, image])
    bad[1, 3, :3] = np.nan
    nan_file = tmp_path / "nan.npy"
    np.save(nan_file, bad[1])
    with pytest.raises(DeepLenseError) as from_array:
        model.predict(bad)
    with pytest.raises(DeepLenseError) as from_file:
        model.predict_files(nan_file)
    command = cli_error("predict", "Model_III", str(nan_file))
    assert str(from_file.value) == command
    reason = "3 pixel(s) are NaN or Inf (or too large for float32)"
    assert str(from_array.value) == f"image 1: {reason}" and f"{nan_file}: {reason}" in command
    skipped = model.predict_files([nan_file, real_samples / "cdm.npy"], skip_bad=True)
    assert skipped.predicted == ["cdm"] and skipped.skipped == [f"{nan_file}: {reason}"]

    small = np.zeros((2, 32, 32), np.float32) + np.linspace(0, 1, 32)
    with pytest.raises(DeepLenseError, match=r"^image 0: image is 1x32x32 .* pass --resize"):
        model.predict(small)
    assert len(model.predict(small, resize=True)) == 2
    with pytest.raises(DeepLenseError, match=r"images of shape \(2, 3, 64, 64\)"):
        model.predict(np.zeros((2, 3, 64, 64)))

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(DeepLenseError) as exc:
        api.load_model(foreign)
    assert str(exc.value) == cli_error("predict", str(foreign), str(real_samples))
    assert "not a deeplense export" in str(exc.value)
    with pytest.raises(DeepLenseError) as exc:
        api.load_model(tmp_path / "missing.onnx")
    assert str(exc.value) == cli_error("predict", str(tmp_path / "missing.onnx"), str(real_samples))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: api.load_model(None), "model must be a path"),  # type: ignore[arg-type]
        (lambda: api.train("resnet18", config=42), "config must be a YAML file's path"),  # type: ignore[arg-type]
        (lambda: api.train(42), "model must be a name"),  # type: ignore[arg-type]
        (lambda: api.train("resnet18", run_dir=3.5), "run_dir must be a path"),  # type: ignore[arg-type]
        (lambda: api.evaluate(None), "target must be a path"),  # type: ignore[arg-type]
        (lambda: api.evaluate("Model_III", out=1), "out must be a path"),  # type: ignore[arg-type]
        (lambda: api.open_dataset(7), "path_or_name must be a path"),  # type: ignore[arg-type]
        (lambda: api.export_onnx(None), "run must be a path"),  # type: ignore[arg-type]
        (lambda: api.simulate("Model_III", out=5), "out must be a path"),  # type: ignore[arg-type]
        (lambda: api.Run.open(None), "path must be a path"),  # type: ignore[arg-type]
    ],
)
def test_wrong_argument_types_are_a_type_error_naming_the_argument(
    call: Any, argument: str
) -> None:
    # was: os.fspath's "expected str, bytes or os.PathLike object, not NoneType" from inside
    with pytest.raises(TypeError, match=f"^{argument}"):
        call()


def test_predict_names_the_image_of_another_size_in_a_list(real_samples: Path) -> None:
    model = api.load_model("Model_III")
    image = read_image(real_samples / "cdm.npy")[0]
    small = np.zeros((32, 32), np.float32) + np.linspace(0, 1, 32)
    with pytest.raises(DeepLenseError, match=r"^images\[1\] has shape \(32, 32\) but images\[0\]"):
        model.predict([image, small])  # was: numpy's "inhomogeneous shape" ValueError
    both = model.predict([image, small], resize=True)
    assert len(both) == 2 and both.predicted[0] == model.predict(image).predicted[0]
    assert len(model.predict([image, image])) == 2
    with pytest.raises(DeepLenseError, match=r"^images\[0\] is not an image array"):
        model.predict(["cdm.npy"])
    with pytest.raises(TypeError, match=r"^paths\[1\] must be a path"):
        model.predict_files([real_samples / "cdm.npy", None])  # type: ignore[list-item]
