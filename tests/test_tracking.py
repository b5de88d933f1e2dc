"""Experiment tracking (``--log``): what TensorBoard and MLflow hold after a run, read back with
their own libraries; files added by a later export or evaluation; plugin loggers through
``register_loggers``; settings checked before a run exists; a tracker that fails mid-run."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.registry import manager as plugins
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.tracking import RECORD_FILE, Tracker, flatten_config, read_record
from deeplense_cli.training.config import resolve

# A third-party logger that records every call, installed as a fake distribution for this
# module (the module-scoped run below logs to it beside the built-in ones).
RECORDER = """
    from deeplense_cli import hookimpl

    EVENTS = []

    class Recorder:
        def start(self, info):
            EVENTS.append({"call": "start", "mode": info.mode, "name": info.name,
                           "experiment": info.experiment, "config": info.config,
                           "record": info.record, "start_epoch": info.start_epoch})
            return {"started": len(EVENTS)}

        def log_epoch(self, epoch, metrics):
            EVENTS.append({"call": "epoch", "epoch": epoch, "metrics": metrics})

        def log_test(self, metrics):
            EVENTS.append({"call": "test", "metrics": metrics})

        def log_artifact(self, path, folder):
            EVENTS.append({"call": "artifact", "path": str(path), "folder": folder})

        def finish(self, status):
            EVENTS.append({"call": "finish", "status": status})

    class Failing(Recorder):
        def log_epoch(self, epoch, metrics):
            raise OSError("the store is read-only")

    @hookimpl
    def register_loggers(register):
        register("recorder", Recorder)
        register("failing", Failing)
"""
QUICK = ["--batch-size", "16", "--output", "quiet", "--num-threads", "1"]


def _install_fake(site: Path, name: str, source: str) -> str:
    module = f"fake_plugin_{name}"
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"fake_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[deeplense]\n{name} = {module}\n")
    return module


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The recording plugin, installed for the whole module; yields its module."""
    site = tmp_path_factory.mktemp("recorder-site")
    module = _install_fake(site, "recorder", RECORDER)
    sys.path.insert(0, str(site))
    plugins.reset()
    import importlib

    yield importlib.import_module(module)
    sys.path.remove(str(site))
    sys.modules.pop(module, None)
    plugins.reset()


@dataclass
class Tracked:
    run: RunDir
    home: Path
    stderr: str
    events: list[dict[str, Any]]

    def mlflow(self) -> tuple[Any, str]:
        from mlflow.tracking import MlflowClient

        record = read_record(self.run)["loggers"]["mlflow"]
        return MlflowClient(tracking_uri=record["tracking_uri"]), record["run_id"]


@pytest.fixture(scope="module")
def tracked(sim_root: Path, recorder: Any, tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    """One ResNet-18 run of 2 epochs with its test evaluation, logged to TensorBoard, MLflow
    (its default store under DEEPLENSE_HOME) and the recording plugin."""
    home = tmp_path_factory.mktemp("tracking-home")
    run_dir = home / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPLENSE_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root",
                str(sim_root), "--run-dir", str(run_dir), "--epochs", "2", *QUICK,
                "--log", "tensorboard,mlflow,recorder"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return Tracked(RunDir.open(run_dir), home, result.stderr, list(recorder.EVENTS))


def _config_logged(run: RunDir) -> dict[str, Any]:
    config = run.read_config()
    config.pop("deeplense_version")
    return config


def _test_metrics(run: RunDir) -> dict[str, Any]:
    return dict(json.loads((run.evaluation_dir / "metrics.json").read_text()))


# ---- TensorBoard --------------------------------------------------------------------------


def test_tensorboard_holds_epochs_test_metrics_figures_and_config(tracked: Tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    events = EventAccumulator(
        str(tracked.run.path / "tensorboard"),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},
    )
    events.Reload()
    rows = tracked.run.read_metrics()
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_auc", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    speeds = [e.value for e in events.Scalars("train_images_per_s")]
    assert speeds == [pytest.approx(r["train_images_per_s"], rel=1e-6) for r in rows]
    assert events.Scalars("val_auc/cdm")[-1].value == pytest.approx(rows[-1]["val_auc"]["cdm"])

    test = _test_metrics(tracked.run)
    (accuracy,) = events.Scalars("test_accuracy")
    assert accuracy.step == 2 and accuracy.value == pytest.approx(test["accuracy"], rel=1e-6)
    assert events.Scalars("test_macro_auc")[0].value == pytest.approx(test["macro_auc"], rel=1e-6)

    images = events.Tags()["images"]
    assert {"evaluation/roc", "evaluation/confusion_matrix"} <= set(images)
    (roc,) = events.Images("evaluation/roc")
    assert roc.width > 100 and roc.encoded_image_string.startswith(b"\x89PNG")

    text = tensor_util.make_ndarray(events.Tensors("config/text_summary")[0].tensor_proto)
    assert yaml.safe_load(textwrap.dedent(text.item().decode())) == _config_logged(tracked.run)
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    config = _config_logged(tracked.run)
    assert hparams["train.lr"].number_value == pytest.approx(config["train"]["lr"])
    assert hparams["model.name"].string_value == "ResNet18"
    assert hparams["tracking.loggers"].string_value == str(["tensorboard", "mlflow", "recorder"])


# ---- MLflow -------------------------------------------------------------------------------


def test_mlflow_holds_params_metrics_and_artifacts(tracked: Tracked) -> None:
    client, run_id = tracked.mlflow()
    assert read_record(tracked.run)["loggers"]["mlflow"]["tracking_uri"] == (
        f"sqlite:///{tracked.home / 'mlflow.db'}"
    )
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tracked.run.path.name
    assert client.get_experiment(run.info.experiment_id).name == "deeplense"
    flat = flatten_config(_config_logged(tracked.run))
    assert run.data.params == {k: str(v) for k, v in flat.items()}
    assert run.data.tags["deeplense.run_dir"] == str(tracked.run.path)

    rows = tracked.run.read_metrics()
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_auc", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["epoch"], r[key]) for r in rows], key
    test = _test_metrics(tracked.run)
    assert run.data.metrics["test_accuracy"] == test["accuracy"]
    assert run.data.metrics["test_macro_auc"] == test["macro_auc"]
    assert run.data.metrics["test_auc/axion"] == test["auc"]["axion"]
    assert run.data.metrics["best_epoch"] == [r["epoch"] for r in rows if r["best"]][-1]

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.jsonl", "evaluation"} <= top
    figures = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/roc.png"} <= figures
    assert "evaluation/confusion_matrix.png" in figures
    local = Path(client.download_artifacts(run_id, "config.yaml", str(tracked.home / "dl")))
    assert local.read_text() == tracked.run.config_path.read_text()
    artifacts = tracked.home / "mlartifacts" / "deeplense"  # beside the store, not in the cwd
    assert any(artifacts.rglob("roc.png"))


# ---- the user interfaces: `tensorboard --logdir RUN` and `mlflow ui` ------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serving(args: list[str], url: str, ready: Any, timeout: float = 120.0) -> Iterator[Any]:
    """Start a server (``args``), poll ``url`` until ``ready(json)`` holds and yield that
    JSON; the server is stopped on leaving."""
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert server.poll() is None, _tail(log)
                try:
                    doc = _get_json(url)
                    if ready(doc):
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"{url} never ready:\n{_tail(log)}"
                time.sleep(0.5)
            yield doc
        finally:
            server.terminate()
            server.wait(timeout=30)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _tail(log: Any) -> str:
    log.seek(0)
    return str(log.read()[-3000:].decode(errors="replace"))


@pytest.mark.slow
def test_tensorboard_logdir_run_shows_the_curves(tracked: Tracked) -> None:
    """What the README promises: ``tensorboard --logdir RUN`` serves each epoch's curves
    (asked over its HTTP API, as its web page does)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    tensorboard = str(Path(sys.executable).with_name("tensorboard"))
    args = [tensorboard, "--logdir", str(tracked.run.path), "--port", str(port),
            "--host", "127.0.0.1"]  # fmt: skip
    tagged = lambda doc: any("val_accuracy" in t for t in doc.values())  # noqa: E731
    with _serving(args, f"{base}/tags", tagged) as tags:
        (run_name,) = [name for name, t in tags.items() if "val_accuracy" in t]
        query = urllib.parse.urlencode({"run": run_name, "tag": "val_accuracy"})
        points = _get_json(f"{base}/scalars?{query}")
    rows = tracked.run.read_metrics()
    assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in points] == [
        (r["epoch"], r["val_accuracy"]) for r in rows
    ]


@pytest.mark.slow
def test_mlflow_ui_shows_the_run_with_its_metrics_and_artifacts(tracked: Tracked) -> None:
    """What the README promises: ``mlflow ui`` on the default store lists the run, its
    metric history and its artifacts (asked over the REST API its web page uses)."""
    record = read_record(tracked.run)["loggers"]["mlflow"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    args = [mlflow, "ui", "--backend-store-uri", record["tracking_uri"], "--port", str(port),
            "--host", "127.0.0.1", "--workers", "1"]  # fmt: skip
    run_id = record["run_id"]
    with _serving(args, f"{base}/runs/get?run_id={run_id}", lambda doc: "run" in doc) as run:
        url = f"{base}/metrics/get-history?run_id={run_id}&metric_key=val_accuracy"
        history = _get_json(url)["metrics"]
        files = {f["path"] for f in _get_json(f"{base}/artifacts/list?run_id={run_id}")["files"]}
    metrics = {m["key"]: m["value"] for m in run["run"]["data"]["metrics"]}
    assert metrics["test_accuracy"] == pytest.approx(_test_metrics(tracked.run)["accuracy"])
    rows = tracked.run.read_metrics()
    assert [(m["step"], m["value"]) for m in history] == [
        (r["epoch"], pytest.approx(r["val_accuracy"])) for r in rows
    ]
    assert {"config.yaml", "metrics.jsonl", "evaluation"} <= files


def test_the_run_records_its_tracker_runs(tracked: Tracked) -> None:
    record = json.loads((tracked.run.path / RECORD_FILE).read_text())
    assert record["status"] == "finished" and record["experiment"] == "deeplense"
    assert set(record["loggers"]) == {"tensorboard", "mlflow", "recorder"}
    assert record["loggers"]["tensorboard"] == {"logdir": "tensorboard"}
    assert record["loggers"]["recorder"] == {"started": 1}
    assert "Warning" not in tracked.stderr


# ---- a plugin's logger (the register_loggers hook) ----------------------------------------


def test_a_plugin_logger_gets_every_event_in_order(tracked: Tracked) -> None:
    events = tracked.events
    calls = [e["call"] for e in events]
    assert calls[0] == "start" and calls[-1] == "finish"
    start = events[0]
    assert start["mode"] == "new" and start["name"] == tracked.run.path.name
    assert start["experiment"] == "deeplense" and start["config"] == _config_logged(tracked.run)
    assert events[1] == {"call": "artifact", "path": str(tracked.run.config_path), "folder": ""}

    rows = tracked.run.read_metrics()
    epochs = [e for e in events if e["call"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for event, row in zip(epochs, rows, strict=True):
        assert event["metrics"]["val_accuracy"] == row["val_accuracy"]
        assert event["metrics"]["lr"] == row["lr"]
        assert event["metrics"]["val_auc/no_sub"] == row["val_auc"]["no_sub"]
        assert "best" not in event["metrics"] and "epoch" not in event["metrics"]
    (test,) = [e["metrics"] for e in events if e["call"] == "test"]
    assert test["test_accuracy"] == _test_metrics(tracked.run)["accuracy"]
    best = [r["epoch"] for r in rows if r["best"]][-1]
    assert test["best_epoch"] == best
    files = {(Path(e["path"]).name, e["folder"]) for e in events if e["call"] == "artifact"}
    assert {
        ("metrics.jsonl", ""),
        ("metrics.json", "evaluation"),
        ("roc.png", "evaluation"),
    } <= files
    assert calls.index("test") > max(i for i, c in enumerate(calls) if c == "epoch")
    assert events[-1] == {"call": "finish", "status": "finished"}


# ---- files added later --------------------------------------------------------------------


def test_export_adds_the_onnx_file_to_the_same_tracker_runs(
    tracked: Tracked, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPLENSE_HOME", str(tracked.home))
    recorder.EVENTS.clear()
    result = CliRunner().invoke(
        cli, ["export", "onnx", str(tracked.run.path), "--validation-images", "8", "--json"]
    )
    assert result.exit_code == 0, result.output
    client, run_id = tracked.mlflow()
    assert "model.onnx" in {a.path for a in client.list_artifacts(run_id)}
    local = Path(client.download_artifacts(run_id, "model.onnx", str(tracked.home / "onnx")))
    assert local.read_bytes() == (tracked.run.path / "model.onnx").read_bytes()
    assert client.get_run(run_id).info.status == "FINISHED"  # left as the training ended it
    events = recorder.EVENTS
    assert [e["call"] for e in events] == ["start", "artifact", "finish"]
    assert events[0]["mode"] == "attach" and events[0]["record"] == {"started": 1}
    assert events[1]["path"] == str(tracked.run.path / "model.onnx")
    assert read_record(tracked.run)["loggers"]["recorder"] == {"started": 1}  # unchanged


def test_a_later_evaluation_adds_its_files(
    tracked: Tracked, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPLENSE_HOME", str(tracked.home))
    result = CliRunner().invoke(cli, ["evaluate", str(tracked.run.path), "--split", "val"])
    assert result.exit_code == 0, result.output
    client, run_id = tracked.mlflow()
    files = {a.path for a in client.list_artifacts(run_id, "evaluation-val")}
    assert {"evaluation-val/metrics.json", "evaluation-val/roc.png"} <= files


def test_an_untracked_run_is_left_alone(tmp_path: Path, recorder: Any) -> None:
    from deeplense_cli.tracking import add_artifacts

    RunDir(tmp_path).write_config(resolve({}, {"model": {"name": "resnet18"}}))
    recorder.EVENTS.clear()
    add_artifacts(tmp_path, [tmp_path / "config.yaml"])  # no tracking.json: nothing to do
    assert recorder.EVENTS == [] and not (tmp_path / RECORD_FILE).exists()


# ---- failures -----------------------------------------------------------------------------


def test_an_mlflow_store_broken_mid_run_costs_one_warning_not_the_run(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQLite store is overwritten with junk after the run started: every later MLflow
    call fails for real; training finishes, exit 0, and says so once."""
    from deeplense_cli.tracking.mlflow_logger import MlflowLogger

    store = tmp_path / "store" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    original = MlflowLogger.log_epoch

    def break_store_then_log(self: MlflowLogger, epoch: int, metrics: dict[str, float]) -> None:
        store.write_bytes(b"not a database" * 512)
        original(self, epoch, metrics)

    monkeypatch.setattr(MlflowLogger, "log_epoch", break_store_then_log)
    run_dir = tmp_path / "run"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(run_dir), "--epochs", "2", *QUICK, "--log", "mlflow"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("Warning:") == 1, result.stderr
    assert "the mlflow logger failed" in result.stderr and "training goes on" in result.stderr
    run = RunDir.open(run_dir)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    assert (run.evaluation_dir / "metrics.json").is_file()
    assert read_record(run)["status"] == "finished"


def test_a_failing_logger_is_dropped_and_the_others_go_on(
    recorder: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDir(tmp_path)
    config = resolve({}, {"model": {"name": "resnet18"}})
    run.write_config(config)
    recorder.EVENTS.clear()
    tracker = Tracker(run, config, ["failing", "recorder"], "new")
    tracker.start()
    for epoch in (1, 2, 3):
        tracker.log_epoch({"epoch": epoch, "val_accuracy": 0.5})
    tracker.finish("finished")
    err = capsys.readouterr().err
    assert err.count("Warning:") == 1 and "the failing logger failed" in err
    assert "read-only" in err
    epochs = [e["epoch"] for e in recorder.EVENTS if e["call"] == "epoch"]
    assert epochs == [1, 2, 3]  # the recorder's; the failing one raised on its first
    finishes = [e for e in recorder.EVENTS if e["call"] == "finish"]
    assert finishes == [{"call": "finish", "status": "finished"}]  # the dropped one is not
    assert set(read_record(run)["loggers"]) == {"failing", "recorder"}


def test_a_run_whose_worker_died_before_finishing_is_settled_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Tune may tear down a finished trial's worker before its tracker writes the end:
    tune settles such a run from what it knows, and leaves one that ended alone."""
    from mlflow.tracking import MlflowClient

    from deeplense_cli.tracking.session import settle

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = RunDir(tmp_path / "trial")
    run.path.mkdir()
    config = resolve({}, {"model": {"name": "resnet18"}})
    run.write_config(config)
    tracker = Tracker(run, config, ["mlflow"], "new")
    tracker.start()
    tracker.log_epoch({"epoch": 1, "val_accuracy": 0.5})  # ...and the worker is gone
    run_id = read_record(run)["loggers"]["mlflow"]["run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    assert settle(run.path, "finished") is True
    assert client.get_run(run_id).info.status == "FINISHED"
    assert read_record(run)["status"] == "finished"
    assert settle(run.path, "killed") is False  # it has ended: left as it is
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "val_accuracy")] == [0.5]


@pytest.mark.parametrize("library", ["mlflow", "tensorboard"])
def test_a_missing_library_is_one_line_naming_its_extra(
    library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_root: Path
) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # what `import library` does when absent
    run_dir = tmp_path / "run"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(run_dir), "--log", f"tensorboard,{library}"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"Error: the {library} logger needs the {library} package, which is not installed: "
        f"pip install 'deeplense[{library}]'"
    ]
    assert not run_dir.exists()  # refused before the run folder was made


def test_an_unknown_logger_lists_the_known_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["train", "-m", "resnet18", "--run-dir", str(tmp_path / "r"), "--log", "mlfow"]
    )
    assert result.exit_code == 1
    assert "unknown logger 'mlfow'; known: " in result.output
    assert "mlflow" in result.output and "tensorboard" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_loggers_come_from_the_config_file_set_or_flag(tmp_path: Path) -> None:
    model = {"model": {"name": "resnet18"}}
    assert resolve({}, model)["tracking"] == {"loggers": [], "experiment": None}  # off
    file = {"tracking": {"loggers": ["TensorBoard"], "experiment": "lenses"}}
    assert resolve(file, model)["tracking"] == {"loggers": ["tensorboard"], "experiment": "lenses"}
    flags = {**model, "tracking": {"loggers": "mlflow, tensorboard"}}
    assert resolve(file, flags)["tracking"]["loggers"] == ["mlflow", "tensorboard"]
    assert resolve(file, {**model, "tracking": {"loggers": "none"}})["tracking"]["loggers"] == []
    sets = {"tracking.loggers": ["mlflow"]}
    assert resolve(file, model, sets)["tracking"]["loggers"] == ["mlflow"]
    for bad, message in [
        ({"tracking": {"loggers": 3}}, "tracking.loggers must be a list of logger names"),
        ({"tracking": {"experiment": ""}}, "tracking.experiment must be a name"),
        ({"tracking": {"logger": ["mlflow"]}}, "unknown tracking setting(s): logger"),
    ]:
        with pytest.raises(DeepLenseError, match=message.replace("(", r"\(").replace(")", r"\)")):
            resolve(bad, model)

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({**model, **file}))
    result = CliRunner().invoke(cli, ["train", "--config", str(config_file), "--print-config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["tracking"] == {
        "loggers": ["tensorboard"],
        "experiment": "lenses",
    }


def test_broken_logger_registrations_are_skipped_and_a_clash_names_both(
    fake_plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_plugin(
        "badloggers",
        """
        from deeplense_cli import hookimpl

        class Fine:
            pass

        @hookimpl
        def register_loggers(register):
            register("Bad Name!", Fine)
            register("nofactory", None)
            register("badrequires", Fine, requires=[3])
            register("fine", Fine, requires="json", install="pip install fine")
        """,
    )
    found = plugins.loggers()
    assert found["fine"].plugin == "badloggers" and found["fine"].requires == ("json",)
    assert {"mlflow", "tensorboard", "fine"} <= set(found)
    assert not {"nofactory", "badrequires"} & set(found)
    err = capsys.readouterr().err
    assert err.count("plugin 'badloggers' registered a broken logger") == 3
    rows = {r["name"]: r for r in plugins.plugin_summary()}
    assert rows["badloggers"]["loggers"] == ["fine"]
    assert rows["deeplense_loggers"]["loggers"] == ["mlflow", "tensorboard"]

    fake_plugin(
        "clash",
        """
        from deeplense_cli import hookimpl

        @hookimpl
        def register_loggers(register):
            register("MLflow", object)
        """,
    )
    with pytest.raises(DeepLenseError, match=r"'deeplense_loggers' and 'clash'|'clash' and"):
        plugins.loggers()


# ---- resuming, jobs -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_resumed_run_continues_its_tracker_runs(
    sim_root: Path, tmp_path: Path, recorder: Any
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(run_dir), "--epochs", "1", *QUICK, "--no-evaluate",
            "--log", "mlflow,tensorboard,recorder"]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    first = read_record(RunDir(run_dir))["loggers"]
    recorder.EVENTS.clear()
    result = CliRunner().invoke(
        cli, ["train", "--resume", str(run_dir), "--epochs", "2", "--output", "quiet"]
    )
    assert result.exit_code == 0, result.output
    run = RunDir.open(run_dir)
    assert read_record(run)["loggers"]["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    start = recorder.EVENTS[0]
    assert start["mode"] == "resume" and start["record"] == first["recorder"]
    assert start["start_epoch"] == 1
    client = MlflowClient(first["mlflow"]["tracking_uri"])
    run_id = first["mlflow"]["run_id"]
    history = client.get_metric_history(run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (r["epoch"], r["val_accuracy"]) for r in run.read_metrics()
    ]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.params["train.epochs"] == "1"  # the first value stays
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_accuracy")] == [1, 2]


def test_a_slurm_job_logs_from_the_config_it_carries(
    sim_root: Path, tmp_path: Path, recorder: Any
) -> None:
    """What a SLURM node runs (``train_job``) takes its loggers from the config alone."""
    from deeplense_cli.cluster.jobs import train_job

    config = resolve(
        {},
        {
            "model": {"name": "resnet18"},
            "data": {"dataset": "Model_III", "data_root": str(sim_root)},
            "train": {"epochs": 1, "batch_size": 16, "num_threads": 1},
            "tracking": {"loggers": ["recorder"], "experiment": "cluster-runs"},
        },
    )
    recorder.EVENTS.clear()
    (tmp_path / "run").mkdir()
    summary = train_job(config, str(tmp_path / "run"))
    assert summary["epochs_completed"] == 1
    calls = [e["call"] for e in recorder.EVENTS]
    assert calls[0] == "start" and calls[-1] == "finish" and "test" in calls
    assert recorder.EVENTS[0]["experiment"] == "cluster-runs"


def test_a_config_from_before_tracking_resolves_with_it_off() -> None:
    """A run's config.yaml written before the tracking section existed still resumes."""
    config = resolve({}, {"model": {"name": "resnet18"}})
    del config["tracking"]
    assert resolve(config)["tracking"] == {"loggers": [], "experiment": None}
