"""What `pip install deeplense` gets: the wheel holds every module and every shipped model, and
a shipped model predicts from the installed files alone (no source tree on the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deeplense_cli.registry import pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from the files a clean checkout has (tracked, or untracked and not ignored): an old
    # build/ folder in the working tree would otherwise lend the wheel files that are not
    # packaged any more.
    source = out / "source"
    listed = subprocess.run(
        ["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    # offline: the venv already has setuptools and wheel (build-system.requires)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)],
        capture_output=True, text=True, cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("deeplense-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_shipped_model(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for base, package in ((REPO, "deeplense_cli"), (REPO / "plugins", "deeplense_plugins")):
        for source in (base / package).rglob("*.py"):
            inside = source.relative_to(base).as_posix()
            assert inside in names, f"{inside} is missing from the wheel"
    shipped = pretrained.shipped_models()
    assert shipped, "no model ships in this checkout"
    for model in shipped.values():
        # the ONNX file, its card and the PyTorch weights that train --init starts from
        for suffix in (".onnx", ".json", ".safetensors"):
            assert f"deeplense_cli/pretrained/{model.path.with_suffix(suffix).name}" in names


@pytest.mark.slow
def test_a_shipped_model_predicts_from_the_installed_files(
    wheel: Path, tmp_path: Path, real_samples: Path
) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "DEEPLENSE_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "deeplense_cli", "predict", "Model_III", str(real_samples), "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["predictions"]
    assert {Path(r["path"]).stem: r["predicted"] for r in rows} == {
        "axion": "axion", "cdm": "cdm", "no_sub": "no_sub",
    }  # fmt: skip
    assert all(r["in_distribution"] for r in rows)  # the released images look like its data
    # and it was the unpacked wheel that ran, not the checkout
    probe = subprocess.run(
        [sys.executable, "-c", "import deeplense_cli; print(deeplense_cli.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert probe.stdout.strip().startswith(str(site)), probe.stdout
