"""Shared fixtures: an isolated DEEPLENSE_HOME, fake plugin distributions, small simulated data."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deeplense_cli.runs.rundir import RunDir

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def _use_home(mp: pytest.MonkeyPatch, home: Path) -> None:
    """Point deeplense at ``home`` and drop the user's root and plugin-blocking settings."""
    mp.setenv("DEEPLENSE_HOME", str(home))
    for name in ("DEEPLENSE_DATA_ROOT", "DEEPLENSE_RUN_ROOT", "DEEPLENSE_BLOCK_PLUGINS"):
        mp.delenv(name, raising=False)


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A DEEPLENSE_HOME for session- and module-scoped fixtures, which are set up before any
    test's own home: without it they would write caches into the user's ~/.deeplense."""
    home = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as mp:
        _use_home(mp, home)
        yield home


@pytest.fixture(autouse=True)
def deeplense_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Every test gets its own DEEPLENSE_HOME, so nothing touches the user's home. It holds
    only caches (image and ONNX caches, default data and run roots), so it is removed after
    the test: a suite that kept them all wrote gigabytes to /tmp."""
    home = tmp_path_factory.mktemp("home")
    _use_home(monkeypatch, home)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Install a plugin as a fake distribution (a dist-info folder on sys.path), the way
    pytest tests entry-point discovery: nothing is pip-installed."""
    from deeplense_cli.registry import manager as plugins

    site = tmp_path / "fake-site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    added: list[str] = []

    def make(name: str, source: str, dist: str | None = None) -> None:
        dist = dist or f"fake-{name}"
        module = f"fake_plugin_{name}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[deeplense]\n{name} = {module}\n")
        added.append(module)
        plugins.reset()

    yield make
    for module in added:
        sys.modules.pop(module, None)
    plugins.reset()


@pytest.fixture(scope="session")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, real Model_III set made by the simulator: 3 x 24 train, 3 x 8 test images."""
    from deeplense_cli.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("simdata")
    simulate_dataset("Model_III", root, train_per_class=24, test_per_class=8, seed=1, workers=1)
    return root


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", default=False, help="also run tests marked slow (CI does)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or os.environ.get("DEEPLENSE_SLOW_TESTS") == "1":
        return
    # the reason is the marker's description in pyproject.toml: one text says when they run
    slow = next(line for line in config.getini("markers") if line.startswith("slow:"))
    skip = pytest.mark.skip(reason=slow)
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_run_template(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 trained for one epoch on ``sim_root`` (once per session; copy before use)."""
    from click.testing import CliRunner

    from deeplense_cli.cli import cli

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(run_dir), "--epochs", "1", "--batch-size", "16", "--output", "quiet",
            "--no-evaluate"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def trained_run(trained_run_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the trained run for one test module (tests write into it)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(trained_run_template, run_dir)
    return run_dir


@functools.cache
def slurm_cluster_problem() -> str | None:
    """Why the local SLURM cluster cannot be used (None when it answers)."""
    import subprocess

    if not shutil.which("sinfo"):
        return "SLURM not installed (no sinfo); run .ci/slurm.sh install && .ci/slurm.sh start"
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 10 s; start the cluster with .ci/slurm.sh start"
    if proc.returncode != 0:
        return f"SLURM cluster not answering ({proc.stderr.strip()}); run .ci/slurm.sh start"
    return None


@pytest.fixture
def quick_train(sim_root: Path) -> Callable[..., RunDir]:
    """Train on ``sim_root`` through the CLI (2 small epochs, one thread) into ``run_dir``;
    extra flags override the defaults."""
    from click.testing import CliRunner

    from deeplense_cli.cli import cli

    quick = ["--epochs", "2", "--batch-size", "16", "--output", "quiet", "--num-threads", "1"]

    def train(run_dir: Path, *extra: str, model: str = "resnet18") -> RunDir:
        args = ["train", "-m", model, "--dataset", "Model_III", "--data-root", str(sim_root)]
        result = CliRunner().invoke(cli, [*args, "--run-dir", str(run_dir), *quick, *extra])
        assert result.exit_code == 0, result.output
        return RunDir.open(run_dir)

    return train


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The three real released Model_III images (no_sub, cdm, axion), kept in the repository
    so a plain clone has them (the same files as the shared ``data/real_samples``)."""
    return REPO / "examples" / "real_samples"


def interruptible() -> None:
    """Popen preexec_fn: Ctrl+C reaches the child even when pytest itself runs in the background.

    A shell starts background jobs with SIGINT ignored, children inherit that, and Python then
    installs no KeyboardInterrupt handler; the child must start from the default disposition.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
