"""Hyper-parameter search: search spaces, settings, and real Ray Tune + ASHA runs.

The Ray tests share one local Ray runtime (2 CPUs, short session dir: Unix socket paths are
capped at 107 bytes) and one small search over the simulated Model_III set; they are marked
slow, as they start Ray and train every trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import interruptible

from deeplense_cli.cli import cli
from deeplense_cli.core.durations import parse_duration
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.training.config import load_config_file, resolve
from deeplense_cli.tune import (
    TuneSettings,
    build_space,
    check_space,
    default_point,
    to_ray_space,
    trial_config,
)

REPO = Path(__file__).resolve().parents[1]

# A small CvT, sequential trials (2 CPUs per trial on a 2-CPU runtime): ASHA sees the trials
# in a fixed order, so which trials it stops does not depend on timing.
SPACE = {
    "batch_size": None,
    "model.s1_depth": {"type": "choice", "values": [1]},
    "model.s2_depth": {"type": "choice", "values": [1]},
    "model.s2_emb_dim": {"type": "choice", "values": [96]},
    "model.s2_heads": {"type": "choice", "values": [2, 3]},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 3e-3},
}
MAX_EPOCHS = 3
NUM_SAMPLES = 4


def _base_config() -> dict[str, Any]:
    return resolve({}, {"model": {"name": "cvt"}})


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _one_line_error(result: Any, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert text in lines[0], result.output


# ---- search spaces (no Ray runtime) ---------------------------------------------------


def test_space_comes_from_the_plugin_and_a_space_file_overrides_and_extends_it() -> None:
    config = _base_config()
    plugin = build_space(config)
    assert plugin["lr"]["type"] == "loguniform" and "model.s2_depth" in plugin
    space = build_space(
        config,
        {
            "lr": {"type": "uniform", "low": 1e-4, "high": 1e-3},  # replaced
            "batch_size": None,  # removed
            "train.label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.2},  # added
            "model.s1_heads": {"type": "randint", "low": 1, "high": 3},  # added
        },
    )
    assert space["lr"] == {"type": "uniform", "low": 1e-4, "high": 1e-3}
    assert "batch_size" not in space
    assert space["label_smoothing"]["high"] == 0.2  # train.<key> is stored as <key>
    assert space["model.s1_heads"] == {"type": "randint", "low": 1, "high": 3}
    assert space["model.s2_depth"] == plugin["model.s2_depth"]  # untouched keys kept


def test_ray_space_samples_inside_the_plain_data_bounds() -> None:
    space = check_space(
        {
            "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
            "model.s1_depth": {"type": "randint", "low": 1, "high": 3},
            "model.dropout": {"type": "choice", "values": [0.0, 0.1]},
        },
        _base_config(),
    )
    ray_space = to_ray_space(space)
    for _ in range(50):
        lr = ray_space["lr"].sample()
        assert 1e-5 <= lr <= 1e-3
        assert 0.0 <= ray_space["weight_decay"].sample() <= 0.1
        assert ray_space["model.s1_depth"].sample() in (1, 2)
        assert ray_space["model.dropout"].sample() in (0.0, 0.1)
    # a sampled point becomes a full, checked config
    cfg = trial_config(_base_config(), {"lr": 2e-4, "model.s1_depth": 1})
    assert cfg["train"]["lr"] == 2e-4 and cfg["model"]["params"]["s1_depth"] == 1


def test_first_trial_point_holds_the_defaults_that_lie_in_the_space() -> None:
    config = _base_config()
    space = check_space({k: v for k, v in SPACE.items() if v is not None}, config)
    point = default_point(space, config)
    # s1/s2 depth and s2_emb_dim defaults (2, 2, 128) are outside the narrowed choices
    assert point == {"model.s2_heads": 3, "lr": config["train"]["lr"]}
    wide = check_space({"model.s1_depth": {"type": "randint", "low": 1, "high": 3}}, config)
    assert default_point(wide, config) == {"model.s1_depth": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.nope": {"type": "choice", "values": [1]}}, "'model.nope' is not a CvT"),
        ({"bogus": {"type": "choice", "values": [1]}}, "unknown setting 'bogus'"),
        ({"data.val_fraction": {"type": "choice", "values": [0.1]}}, "cannot be tuned"),
        ({"epochs": {"type": "choice", "values": [3]}}, "--max-epochs"),
        ({"lr": {"type": "gaussian", "low": 1, "high": 2}}, "unknown type 'gaussian'"),
        ({"lr": {"type": "loguniform", "low": 0, "high": 1e-3}}, "needs low > 0"),
        ({"lr": {"type": "uniform", "low": 1e-3, "high": 1e-4}}, "needs low < high"),
        ({"lr": {"type": "uniform", "low": "a", "high": 1}}, "numeric 'low' and 'high'"),
        ({"batch_size": {"type": "choice", "values": []}}, "non-empty list"),
        ({"batch_size": {"type": "choice", "vals": [1]}}, "unknown field(s) vals"),
        ({"model.s1_depth": {"type": "randint", "low": 1.5, "high": 3}}, "integer low"),
        ({"lr": 0.001}, "must be a mapping with a 'type'"),
    ],
)
def test_bad_space_entries_are_clear_errors(override: dict[str, Any], message: str) -> None:
    with pytest.raises(DeepLenseError, match=None) as info:
        build_space(_base_config(), override)
    assert message in str(info.value)


def test_settings_are_checked() -> None:
    with pytest.raises(DeepLenseError, match="unknown metric 'val_f1'"):
        TuneSettings(metric="val_f1").validate()
    with pytest.raises(DeepLenseError, match="--grace-period"):
        TuneSettings(max_epochs=3, grace_period=4).validate()
    with pytest.raises(DeepLenseError, match="--reduction-factor"):
        TuneSettings(reduction_factor=1).validate()
    assert TuneSettings(metric="val_loss").mode == "min"
    assert TuneSettings().mode == "max"  # val_macro_auc by default


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("01:02:03", 3723)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text, seconds",
    [("1.5h", 5400), ("2H", 7200), (" 1d ", 86400), ("02:30", 150), ("90.5", 90.5), (45, 45)],
)
def test_parse_duration_more_forms(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, seconds", [("1-12", 129600), ("1-00:30", 88200), ("0-1:2:3", 3723)])
def test_time_budget_takes_slurm_day_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_an_error() -> None:
    with pytest.raises(DeepLenseError, match="cannot read duration"):
        parse_duration("soon")


# ---- command-line errors (no Ray runtime) ---------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        ("lr: [unclosed", "is not valid YAML"),
        ("- lr\n- wd\n", "must hold a mapping: setting names to dimensions"),
        ("model.nope: {type: choice, values: [1]}\n", "'model.nope' is not a ResNet18"),
        ("lr: {type: loguniform, low: -1, high: 1}\n", "needs low > 0"),
    ],
)
def test_bad_space_file_is_a_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(content)
    result = _invoke("tune", "-m", "resnet18", "--dataset", "Model_III", "--space", str(space))
    _one_line_error(result, message)


def test_unknown_metric_is_a_one_line_error() -> None:
    result = _invoke("tune", "-m", "resnet18", "--dataset", "Model_III", "--metric", "val_f1")
    _one_line_error(result, "unknown metric 'val_f1'")


def test_resume_errors_are_one_line() -> None:
    _one_line_error(
        _invoke("tune", "--resume", "nothing-here"), "no tune experiment 'nothing-here'"
    )
    _one_line_error(
        _invoke("tune", "--resume", "x", "--num-samples", "3", "-m", "cvt"),
        "drop --model, --num-samples",
    )
    _one_line_error(_invoke("tune", "-m", "cvt", "--name", "../up"), "invalid experiment name")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-epochs", "0"], "--max-epochs must be 1 or more, got 0"),  # was: 10 epochs
        (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
        (["--num-cpus", "0"], "--num-cpus must be a whole number >= 1, got 0"),
    ],
)
def test_numeric_flags_are_range_checked(flags: list[str], message: str) -> None:
    _one_line_error(_invoke("tune", "-m", "resnet18", "--dataset", "Model_III", *flags), message)


def test_ctrl_c_stops_the_search_the_way_ray_does_and_is_reported() -> None:
    """Ray Tune's loop stops on SIGUSR1 (and on SIGINT, unless told not to catch it) and
    returns as if the search had ended: _fit must know it was interrupted."""
    import threading

    from deeplense_cli.tune.experiment import _fit

    class RayLikeTuner:
        def fit(self) -> None:
            assert os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == "1"
            stop = threading.Event()
            signal.signal(signal.SIGUSR1, lambda *_: stop.set())  # what tune.run installs
            signal.raise_signal(signal.SIGINT)  # the user's Ctrl+C
            assert stop.wait(5), "Ray was not asked to stop"

    previous = signal.getsignal(signal.SIGINT)
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        assert _fit(RayLikeTuner(), None) is True
    finally:
        signal.signal(signal.SIGUSR1, usr1)
    assert signal.getsignal(signal.SIGINT) is previous
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_an_interrupted_search_ends_interrupted_with_130(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from deeplense_cli import tune as engine
    from deeplense_cli.tune.results import TuneOutcome

    outcome = TuneOutcome(
        name="x", path=tmp_path, metric="val_loss", mode="min", max_epochs=2, trials=[],
        best=None, best_config_path=None, plot_path=None, finished=False, interrupted=True,
    )  # fmt: skip
    monkeypatch.setattr(engine, "resume_tune", lambda *a, **k: outcome)
    result = _invoke("tune", "--resume", "x")
    assert result.exit_code == 130, result.output  # was: 0
    assert "deeplense tune --resume x" in result.output
    assert result.output.strip().endswith("Interrupted.")
    lines = _invoke("tune", "--resume", "x", "--output", "jsonl").stdout.splitlines()
    assert json.loads(lines[-1]) == {"event": "interrupted", "name": "x"}


def test_a_per_run_time_budget_is_refused_for_a_search() -> None:
    result = _invoke("tune", "-m", "cvt", "--dataset", "Model_III", "--set", "train.max_minutes=5")
    _one_line_error(result, "limit it with --time-budget")


def test_missing_data_is_an_error_before_ray_starts(tmp_path: Path) -> None:
    result = _invoke("tune", "-m", "cvt", "--dataset", "Model_III", "--data-root", str(tmp_path))
    _one_line_error(result, "dataset Model_III is not in")


def test_unreachable_ray_address_is_a_quick_error(sim_root: Path) -> None:
    started = time.monotonic()
    result = _invoke(
        "tune", "-m", "cvt", "--dataset", "Model_III", "--data-root", str(sim_root),
        "--address", "127.0.0.1:1",
    )  # fmt: skip
    _one_line_error(result, "cannot reach the Ray cluster at 127.0.0.1:1")
    assert time.monotonic() - started < 30


# ---- real Ray Tune runs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    temp = f"/tmp/ray-dlt-{os.getpid()}"  # short: AF_UNIX paths are capped at 107 bytes
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _tune_args(
    sim_root: Path, space_file: Path, name: str, samples: int = NUM_SAMPLES
) -> list[str]:
    return [
        "tune",
        "-m",
        "cvt",
        "--dataset",
        "Model_III",
        "--data-root",
        str(sim_root),
        "--val-fraction",
        "0.3",
        "--set",
        "train.batch_size=16",
        "--space",
        str(space_file),
        "--num-samples",
        str(samples),
        "--max-epochs",
        str(MAX_EPOCHS),
        "--grace-period",
        "1",
        "--reduction-factor",
        "2",
        "--cpus-per-trial",
        "2",
        "--seed",
        "3",
        "--name",
        name,
    ]


class Experiment:
    def __init__(self, home: Path, name: str, output: str) -> None:
        self.home, self.name, self.output = home, name, output
        self.path = home / "runs" / "tune" / name
        self.trials: list[dict[str, Any]] = json.loads((self.path / "trials.json").read_text())


@pytest.fixture(scope="module")
def experiment(
    ray_runtime: None, sim_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Experiment]:
    """One real 4-trial ASHA search through the CLI, shared by the tests below."""
    home = tmp_path_factory.mktemp("tunehome")
    space_file = home / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPLENSE_HOME", str(home))
        result = _invoke(*_tune_args(sim_root, space_file, "exp"))
    assert result.exit_code == 0, result.output
    yield Experiment(home, "exp", result.output)


@pytest.mark.slow
def test_asha_stops_trials_and_the_results_are_reported(experiment: Experiment) -> None:
    trials = experiment.trials
    assert len(trials) == NUM_SAMPLES
    epochs = [t["epochs"] for t in trials]
    assert all(t["status"] in ("completed", "stopped") for t in trials), trials
    assert MAX_EPOCHS in epochs  # some trial ran to the end...
    assert min(epochs) < MAX_EPOCHS  # ...and ASHA stopped at least one early
    first = min(trials, key=lambda t: t["trial_id"])
    assert first["params"]["lr"] == _base_config()["train"]["lr"]  # trial 1: the defaults
    assert first["params"]["model.s2_heads"] == 3
    for t in trials:
        assert (t["status"] == "completed") == (t["epochs"] == MAX_EPOCHS)
        # the --space override reached the trials: fixed choices, no batch size dimension
        assert t["params"]["model.s2_depth"] == 1 and "batch_size" not in t["params"]
        assert 1e-5 <= t["params"]["lr"] <= 3e-3
        # each trial is a deeplense run; its metrics are what ASHA saw
        run = Path(t["run_dir"])
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, t["epochs"] + 1))
        assert t["best_value"] == max(r["val_macro_auc"] for r in rows)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["train"]["num_threads"] == 2  # threads = --cpus-per-trial
        assert config["train"]["epochs"] == MAX_EPOCHS
        assert (run / "checkpoints" / "last.pt").is_file()
        # Ray kept the trial's checkpoint (a copy of last.pt) in the experiment
        ray_ckpts = list((experiment.path / f"trial_{t['trial_id']}").glob("checkpoint_*"))
        assert ray_ckpts and (ray_ckpts[0] / "last.pt").is_file()
    # the table lists every trial with its epochs and status
    for t in trials:
        assert t["trial_id"].rsplit("_", 1)[-1] in experiment.output
    assert f"{MAX_EPOCHS}/{MAX_EPOCHS}" in experiment.output and "stopped" in experiment.output
    assert "Best trial" in experiment.output
    # nothing in ~/ray_results: Ray wrote under the deeplense run root
    assert (experiment.path / "tuner.pkl").is_file()


@pytest.mark.slow
def test_best_config_trains_as_is(
    experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    best_file = experiment.path / "best_config.yaml"
    best = resolve(load_config_file(best_file))
    assert best == load_config_file(best_file) | {}  # a full resolved config, nothing missing
    winners = [t for t in experiment.trials if t["epochs"] == MAX_EPOCHS]
    chosen = max(winners, key=lambda t: t["best_value"])
    assert best["train"]["lr"] == chosen["params"]["lr"]
    assert best["model"]["params"]["s2_heads"] == chosen["params"]["model.s2_heads"]
    assert best["train"]["num_threads"] is None  # the trial's thread pinning is not kept
    monkeypatch.setenv("DEEPLENSE_HOME", str(experiment.home))  # the same data cache
    run_dir = tmp_path / "run"
    result = _invoke(
        "train",
        "--config",
        str(best_file),
        "--run-dir",
        str(run_dir),
        "--output",
        "quiet",
        "--no-evaluate",
    )
    assert result.exit_code == 0, result.output
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == MAX_EPOCHS
    assert (
        yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == best["train"]["lr"]
    )


@pytest.mark.slow
def test_learning_curve_plot_is_a_png(experiment: Experiment) -> None:
    plot = experiment.path / "learning_curves.png"
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(experiment.path.glob(".learning_curves.png.*"))  # no temporary left


@pytest.mark.slow
def test_resuming_a_finished_experiment_reruns_nothing(
    experiment: Experiment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplense_cli.tune import resume_tune

    monkeypatch.setenv("DEEPLENSE_HOME", str(experiment.home))
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in (experiment.path / "runs").glob("*/metrics.jsonl")
    }
    outcome = resume_tune(experiment.name)
    assert outcome.finished
    assert [t.epochs for t in outcome.trials] == [t["epochs"] for t in experiment.trials]
    after = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in (experiment.path / "runs").glob("*/metrics.jsonl")
    }
    assert after == before


@pytest.mark.slow
def test_a_second_search_with_the_same_name_is_refused(
    experiment: Experiment, sim_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPLENSE_HOME", str(experiment.home))
    space_file = experiment.home / "space.yaml"
    result = _invoke(*_tune_args(sim_root, space_file, experiment.name))
    _one_line_error(result, f"deeplense tune --resume {experiment.name}")


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_an_error(
    ray_runtime: None, sim_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _invoke(
        "tune", "-m", "cvt", "--dataset", "Model_III", "--data-root", str(sim_root),
        "--val-fraction", "0.3", "--gpus-per-trial", "1", "--name", "gpu",
    )  # fmt: skip
    _one_line_error(result, "--gpus-per-trial 1 but the Ray cluster has 0 GPUs")


@pytest.mark.slow
def test_interrupted_search_resumes_from_checkpoints(
    ray_runtime: None, sim_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Ctrl+C a `deeplense tune` process once its second trial has a Ray checkpoint, then
    `--resume`: the finished trial is not run again, the interrupted one continues from its
    checkpoint (its first epoch is not retrained, whether or not Ray had registered that
    checkpoint), the trial not yet started runs."""
    home = tmp_path_factory.mktemp("inthome")
    space_file = home / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    env = {**os.environ, "DEEPLENSE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    args = _tune_args(sim_root, space_file, "int", samples=3)
    args[args.index("--grace-period") + 1] = str(MAX_EPOCHS)  # no ASHA stops: a long trial 2
    proc = subprocess.Popen(
        [sys.executable, "-m", "deeplense_cli", *args, "--num-cpus", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=interruptible,
    )
    exp = home / "runs" / "tune" / "int"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            # trials run one at a time: two runs with a last checkpoint = trial 1 ended and
            # trial 2 finished its first epoch; interrupted now, Ray has usually not yet
            # registered that epoch's checkpoint, and the trial resumes from its own run
            if len(list(exp.glob("runs/*/checkpoints/last.pt"))) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "deeplense tune --resume int" in output, output
    assert proc.returncode == 130 and output.strip().endswith("Interrupted."), output
    runs = exp / "runs"
    before = {p.parent.name: p.read_text().splitlines() for p in runs.glob("*/metrics.jsonl")}
    assert len(before) == 2
    first, second = sorted(before)
    assert len(before[first]) == MAX_EPOCHS and 1 <= len(before[second]) < MAX_EPOCHS

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPLENSE_HOME", str(home))
        result = _invoke("tune", "--resume", "int")
    assert result.exit_code == 0, result.output
    trials = json.loads((exp / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["completed"] * 3, trials
    after = {p.parent.name: p.read_text().splitlines() for p in runs.glob("*/metrics.jsonl")}
    assert sorted(after) == [t["trial_id"] for t in trials]
    assert after[first] == before[first]  # the finished trial did not run again
    # epoch 1 of the interrupted trial came from its checkpoint: the same row, timings and all
    assert after[second][0] == before[second][0]
    assert [json.loads(r)["epoch"] for r in after[second]] == list(range(1, MAX_EPOCHS + 1))


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sinfo") is None, reason="SLURM not installed (.ci/slurm.sh)")
def test_slurm_runs_the_whole_search_as_one_job(
    sim_root: Path, deeplense_home: Path, tmp_path: Path
) -> None:
    """`--slurm --wait`: one job starts Ray on its CPUs and runs the search; the results land
    in the same experiment folder as a local search."""
    from deeplense_cli import cluster

    if not cluster.slurm_available():
        pytest.skip("the local SLURM cluster is not running (.ci/slurm.sh start)")
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    args = _tune_args(sim_root, space_file, "onslurm", samples=2)
    args[args.index("--max-epochs") + 1] = "2"
    result = _invoke(*args, "--slurm", "--cpus", "2", "--time", "00:10:00", "--wait")
    try:
        assert result.exit_code == 0, result.output
    finally:
        ids = [p.stem for p in (deeplense_home / "jobs").glob("*.json")]
        if ids and shutil.which("scancel"):
            subprocess.run(["scancel", *ids], capture_output=True, timeout=20, check=False)
    exp = deeplense_home / "runs" / "tune" / "onslurm"
    trials = json.loads((exp / "trials.json").read_text())
    assert len(trials) == 2 and trials[0]["status"] == "completed"  # trial 1 runs alone
    assert trials[1]["status"] in ("completed", "stopped")
    jobs = [p.name for p in (exp / "slurm").iterdir() if p.is_dir()]
    assert len(jobs) == 1 and jobs[0].isdigit()  # submitit's folder of the one job
    assert (exp / "best_config.yaml").is_file()
    assert "Best trial" in result.output


def test_trial_restored_without_a_ray_checkpoint_resumes_from_its_run(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray registers a reported checkpoint in a step after the result, so a search interrupted
    in between restores the trial with no checkpoint: it must continue from its run's own last
    checkpoint, not train its epochs again. A real search cannot be stopped in that window on
    purpose (test_interrupted_search_resumes_from_checkpoints runs the real path), so Ray's
    session calls are replaced here; the training is real."""
    from ray import tune

    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.tune.trials import _run_trial

    reported: list[dict[str, Any]] = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(
        tune, "get_context", lambda: type("Ctx", (), {"get_trial_id": lambda self: "t1"})()
    )
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append(metrics))
    base = resolve(
        {},
        {
            "model": {"name": "cvt"},
            "data": {"dataset": "Model_III", "data_root": str(sim_root), "val_fraction": 0.3},
            "train": {"epochs": 2, "batch_size": 16},
        },
    )
    params = {"model.s1_depth": 1, "model.s2_depth": 1, "model.s2_heads": 2}
    run = RunDir(tmp_path / "t1")

    def trial(epochs: int) -> None:
        base["train"]["epochs"] = epochs
        _run_trial(params, base=base, runs_dir=str(tmp_path), env={}, threads=1)

    trial(1)  # epoch 1, reported; its checkpoint then "lost" by Ray
    first = run.metrics_path.read_text().splitlines()
    trial(2)  # restored without a Ray checkpoint
    rows = run.metrics_path.read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    assert rows[0] == first[0]  # epoch 1 was not trained again: the same row, timings and all
    assert [m["epoch"] for m in reported] == [1, 2]

    shutil.rmtree(run.path / "checkpoints")  # no checkpoint anywhere: the trial starts over
    trial(1)
    again = run.metrics_path.read_text().splitlines()
    assert len(again) == 1 and again[0] != first[0]


def test_a_trial_logs_to_the_experiment_of_its_search(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loggers travel in the base config; each trial is one tracker run named after it,
    grouped under the search's name. Ray's session calls are replaced, the training is real."""
    from mlflow.tracking import MlflowClient
    from ray import tune
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.tracking import read_record
    from deeplense_cli.tune.trials import _run_trial

    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(
        tune, "get_context", lambda: type("Ctx", (), {"get_trial_id": lambda self: "t7"})()
    )
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = resolve(
        {},
        {
            "model": {"name": "cvt"},
            "data": {"dataset": "Model_III", "data_root": str(sim_root), "val_fraction": 0.3},
            "train": {"epochs": 1, "batch_size": 16},
            "tracking": {"loggers": ["mlflow", "tensorboard"]},
        },
    )
    params = {"model.s1_depth": 1, "model.s2_depth": 1, "model.s2_heads": 2}
    _run_trial(params, base=base, runs_dir=str(tmp_path), env={}, threads=1, search="lens-search")

    run = RunDir.open(tmp_path / "t7")
    assert run.read_config()["tracking"]["experiment"] == "lens-search"
    record = read_record(run)["loggers"]["mlflow"]
    client = MlflowClient(record["tracking_uri"])
    (logged,) = client.search_runs([client.get_experiment_by_name("lens-search").experiment_id])
    assert logged.info.run_name == "t7" and logged.info.status == "FINISHED"
    (row,) = run.read_metrics()
    assert logged.data.metrics["val_accuracy"] == row["val_accuracy"]
    assert logged.data.params["model.params.s2_heads"] == "2"
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_macro_auc")] == [1]


@pytest.mark.slow
def test_a_search_logs_one_tracker_run_per_trial(
    ray_runtime: None, sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DEEPLENSE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    args = _tune_args(sim_root, space_file, "logged", samples=3)
    result = _invoke(*args, "--max-epochs", "2", "--log", "mlflow,tensorboard")
    assert result.exit_code == 0, result.output
    trials = json.loads((tmp_path / "runs" / "tune" / "logged" / "trials.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("logged")
    logged = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(logged) == {Path(t["run_dir"]).name for t in trials}
    assert {t["status"] for t in trials} == {"completed", "stopped"}  # ASHA stopped one
    for t in trials:
        run = logged[Path(t["run_dir"]).name]
        rows = [
            json.loads(x)
            for x in (Path(t["run_dir"]) / "metrics.jsonl").read_text().split("\n")
            if x
        ]
        history = client.get_metric_history(run.info.run_id, "val_macro_auc")
        assert [(m.step, m.value) for m in history] == [
            (r["epoch"], r["val_macro_auc"]) for r in rows
        ]
        # a trial that ran all its epochs finished; one the scheduler stopped was killed
        assert run.info.status == ("FINISHED" if t["status"] == "completed" else "KILLED")
        assert "metrics.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert (Path(t["run_dir"]) / "tensorboard").is_dir()


@pytest.mark.slow
def test_a_search_fine_tunes_from_a_shipped_model(
    ray_runtime: None, sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tune --init: every trial starts from the shipped weights; only training settings are
    searched (the weights fix the model's shape)."""
    monkeypatch.setenv("DEEPLENSE_HOME", str(tmp_path))
    args = ["tune", "--init", "Model_III", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--set", "train.batch_size=16", "--num-samples", "2", "--max-epochs", "1",
            "--cpus-per-trial", "2", "--name", "ft"]  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    trials = json.loads((tmp_path / "runs" / "tune" / "ft" / "trials.json").read_text())
    assert len(trials) == 2
    for t in trials:
        assert not any(k.startswith("model.") for k in t["params"]), t["params"]
        run = Path(t["run_dir"])
        assert json.loads((run / "init.json").read_text())["shipped_model"] == "Model_III"
        assert yaml.safe_load((run / "config.yaml").read_text())["train"]["init"] == "Model_III"
        # from the shipped weights, one epoch on this Model_III data is far above chance
        assert t["best_value"] > 0.9, t
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"model.s2_heads": {"type": "choice", "values": [2]}}))
    refused = _invoke(*args[:-2], "--name", "ft2", "--space", str(space))
    assert refused.exit_code != 0 and "come with its weights" in refused.output
