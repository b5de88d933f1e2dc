"""The example third-party plugin package, pip-installed for real into this venv and seen
by a fresh `deeplense` process through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "deeplense-example-plugin"
DIST = "deeplense-example-plugin"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )


def _run(code: str) -> str:
    """Run Python in a fresh interpreter (entry points are read anew) and return stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DEEPLENSE_BLOCK_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def installed_example() -> Iterator[None]:
    """pip-install the example package (no deps, no build isolation: offline, fast).

    It is left installed when it was installed before the session; otherwise removed
    again, so the venv is as it was.
    """
    import importlib.util

    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is needed to build the example plugin without isolation")
    was_installed = _pip("show", "-q", DIST).returncode == 0
    proc = _pip("install", "--no-deps", "--no-build-isolation", "-q", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    # setuptools builds in the source folder; the installed copy does not need these
    shutil.rmtree(EXAMPLE / "build", ignore_errors=True)
    shutil.rmtree(EXAMPLE / "deeplense_example_plugin.egg-info", ignore_errors=True)
    yield
    if not was_installed:
        _pip("uninstall", "-y", "-q", DIST)


def _cli(*args: str) -> object:
    out = _run(
        "import sys; from deeplense_cli.cli import main; "
        f"sys.argv = ['deeplense', *{list(args)!r}]; main()"
    )
    return json.loads(out)


def test_example_plugin_installs_and_registers_through_its_entry_point(
    installed_example: None,
) -> None:
    plugins = _cli("plugins", "--json")
    assert isinstance(plugins, list)
    example = [row for row in plugins if row["name"] == "example"]
    assert example, f"plugin 'example' not listed: {[row['name'] for row in plugins]}"
    assert example[0]["distribution"] == DIST
    assert example[0]["module"] == "deeplense_example_plugin"
    assert example[0]["architectures"] == ["TinyCNN"]
    assert "register_architectures" in example[0]["hooks"]

    models = _cli("models", "--json")
    assert isinstance(models, list)
    tiny = [row for row in models if row["name"] == "TinyCNN"]
    assert tiny and tiny[0]["plugin"] == "example"
    assert tiny[0]["image_sizes"] == [64, 150]
    assert tiny[0]["parameters"] and tiny[0]["parameters"] > 0
    # the built-in architectures are still there beside it
    assert {"CCT", "Swin", "ResNet18"} <= {row["name"] for row in models}

    # looked up by case-insensitive name and checked against the full contract
    out = _run(
        "from deeplense_cli.registry.manager import get_architecture\n"
        "from deeplense_cli.registry.contract import check_architecture\n"
        "arch = get_architecture('tinycnn')\n"
        "check_architecture(arch)\n"
        "print(arch.name, arch.plugin)\n"
    )
    assert out.split() == ["TinyCNN", "example"]


def test_blocking_the_example_plugin_hides_its_architecture(installed_example: None) -> None:
    out = _run(
        "import os; os.environ['DEEPLENSE_BLOCK_PLUGINS'] = 'example'\n"
        "from deeplense_cli.registry.manager import architectures\n"
        "print(sorted(a.name for a in architectures().values()))\n"
    )
    assert "TinyCNN" not in out and "CCT" in out


def test_example_plugin_meets_the_contract_without_installing() -> None:
    """The package's own module, imported from its folder: fast, no pip."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from deeplense_example_plugin import TINY_CNN

        from deeplense_cli.registry.contract import check_architecture

        check_architecture(TINY_CNN)
        assert TINY_CNN.name == "TinyCNN"
        for key in TINY_CNN.tune_space:
            if key.startswith("model."):
                assert key[6:] in TINY_CNN.defaults
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_plugin_module_does_not_import_torch() -> None:
    out = _run(
        f"import sys; sys.path.insert(0, {str(EXAMPLE)!r})\n"
        "import deeplense_example_plugin\n"
        "print('torch' in sys.modules)\n"
    )
    assert out.strip() == "False"


def _wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline W&B run file (``run-ID.wandb``): a 7-byte header,
    then LevelDB-style log blocks of 32 KiB whose chunks (7-byte header: CRC, length, type
    full/first/middle/last) make up one record each. wandb 0.31 ships no reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # padding to the block's end
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_the_example_wandb_logger_records_a_run_offline(
    installed_example: None,
    quick_train: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--log wandb`` from the pip-installed example plugin, in W&B's offline mode; the
    values are read back from the run file W&B wrote."""
    pytest.importorskip("wandb")
    import importlib

    from deeplense_cli.registry import manager as plugins

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    importlib.invalidate_caches()
    plugins.reset()  # read the entry points again: the package was installed meanwhile
    try:
        assert plugins.loggers()["wandb"].plugin == "example"
        run = quick_train(tmp_path / "run", "--log", "wandb")
    finally:
        plugins.reset()
    record = json.loads((run.path / "tracking.json").read_text())["loggers"]["wandb"]
    (run_file,) = (tmp_path / "wandb-dir" / "wandb").glob(f"offline-run-*/run-{record['id']}.wandb")
    records = list(_wandb_records(run_file))

    def values(items: Any) -> dict[str, Any]:
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}

    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.project == "deeplense" and started.display_name == run.path.name
    config = run.read_config()
    logged_config = values(started.config.update)
    assert logged_config["train"]["lr"] == config["train"]["lr"]
    assert logged_config["model"] == config["model"]
    assert logged_config["tracking"] == {"loggers": ["wandb"], "experiment": None}

    history = [values(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    rows = run.read_metrics()
    assert [h["_step"] for h in history] == [r["epoch"] for r in rows]
    for logged, row in zip(history, rows, strict=True):
        assert logged["val_accuracy"] == pytest.approx(row["val_accuracy"], rel=1e-12)
        assert logged["lr"] == pytest.approx(row["lr"], rel=1e-12)
        assert logged["val_auc/cdm"] == pytest.approx(row["val_auc"]["cdm"], rel=1e-12)

    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(values(r.summary.update))
    test = json.loads((run.evaluation_dir / "metrics.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(test["accuracy"], rel=1e-12)
    assert summary["test_macro_auc"] == pytest.approx(test["macro_auc"], rel=1e-12)

    files = {
        f.path for r in records if r.WhichOneof("record_type") == "files" for f in r.files.files
    }
    assert {
        "config.yaml",
        "metrics.jsonl",
        "evaluation/roc.png",
        "evaluation/metrics.json",
    } <= files
    saved = run_file.parent / "files" / "evaluation" / "metrics.json"
    assert json.loads(saved.read_text())["accuracy"] == test["accuracy"]
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0
