"""Plugin discovery through entry points, failure isolation, duplicates, blocking, hooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.registry import hookspecs
from deeplense_cli.registry import manager as plugins

TINY = """
    from deeplense_cli import Architecture, hookimpl

    def build(*, image_size, num_classes, in_channels, width=4):
        import torch.nn as nn
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(width, num_classes))

    @hookimpl
    def register_architectures(register):
        register(Architecture(name="{name}", factory=build, defaults={{"width": 4}},
                              description="tiny test net", image_sizes=(64,)))
"""


def test_builtin_architectures_come_from_entry_points() -> None:
    archs = plugins.architectures()
    assert archs["cct"].plugin == "vit_pytorch"
    assert archs["swin"].plugin == "timm_swin"
    assert archs["resnet18"].plugin == "torchvision_resnet"
    assert plugins.distribution_of("vit_pytorch") == "deeplense"


def test_fake_distribution_is_discovered(fake_plugin) -> None:
    fake_plugin("tiny", TINY.format(name="TinyNet"))
    arch = plugins.get_architecture("tinynet")
    assert arch.plugin == "tiny"
    assert plugins.distribution_of("tiny") == "fake-tiny"
    model = arch.build(image_size=64, num_classes=4)
    import torch

    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 4)
    rows = {r["name"]: r for r in plugins.plugin_summary()}
    assert rows["tiny"]["architectures"] == ["TinyNet"]
    assert rows["tiny"]["hooks"] == ["register_architectures"]


def test_plugin_that_fails_to_import_is_reported_and_skipped(fake_plugin, capsys) -> None:
    fake_plugin("broken", "raise ImportError('missing dependency frobnicate')\n")
    archs = plugins.architectures()
    assert "cct" in archs  # everything else keeps working
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "frobnicate" in err and "skipped" in err


def test_plugin_registering_a_broken_architecture_is_skipped(fake_plugin, capsys) -> None:
    fake_plugin(
        "badarch",
        """
        from deeplense_cli import Architecture, hookimpl

        @hookimpl
        def register_architectures(register):
            register("not an architecture")
            register(Architecture(name="bad name!", factory=print))
            register(Architecture(name="NoFactory", factory=None))
        """,
    )
    archs = plugins.architectures()
    assert "nofactory" not in archs and "cct" in archs
    err = capsys.readouterr().err
    assert err.count("plugin 'badarch' registered a broken architecture") == 3


def test_plugin_whose_hook_raises_is_skipped(fake_plugin, capsys) -> None:
    fake_plugin(
        "raiser",
        """
        from deeplense_cli import hookimpl

        @hookimpl
        def register_architectures(register):
            raise RuntimeError("boom")
        """,
    )
    assert "cct" in plugins.architectures()
    assert "plugin 'raiser' failed in register_architectures" in capsys.readouterr().err


def test_duplicate_names_are_an_error_naming_both_plugins(fake_plugin) -> None:
    fake_plugin("dupe", TINY.format(name="cct"))
    with pytest.raises(DeepLenseError) as err:
        plugins.architectures()
    assert "'vit_pytorch'" in str(err.value) and "'dupe'" in str(err.value)


def test_duplicate_error_reaches_the_cli_as_one_line(fake_plugin) -> None:
    fake_plugin("dupe", TINY.format(name="CCT"))
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 1
    assert "registered by two plugins" in result.output
    assert "Traceback" not in result.output


def test_blocking_a_plugin(fake_plugin, monkeypatch) -> None:
    fake_plugin("dupe", TINY.format(name="CCT"))
    monkeypatch.setenv("DEEPLENSE_BLOCK_PLUGINS", "dupe")
    plugins.reset()
    assert plugins.get_architecture("CCT").plugin == "vit_pytorch"
    monkeypatch.setenv("DEEPLENSE_BLOCK_PLUGINS", "vit_pytorch")
    plugins.reset()
    assert plugins.get_architecture("CCT").plugin == "dupe"
    assert "cvt" not in plugins.architectures()


def test_a_plugin_failing_in_register_commands_is_skipped(
    fake_plugin, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_plugin(
        "badcmd",
        """
        from deeplense_cli import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("boom")
        """,
    )
    plugins.add_commands(cli)
    assert "plugin 'badcmd' failed in register_commands and was skipped: boom" in (
        capsys.readouterr().err
    )
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output


def test_register_commands_hook_adds_a_subcommand(fake_plugin) -> None:
    fake_plugin(
        "cmd",
        """
        import click
        from deeplense_cli import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command(name="hello-plugin")
            def hello():
                "Say hello from a plugin."
                click.echo("hello from a plugin")
        """,
    )
    plugins.add_commands(cli)
    try:
        result = CliRunner().invoke(cli, ["hello-plugin"])
        assert result.exit_code == 0, result.output
        assert "hello from a plugin" in result.output
    finally:
        cli.commands.pop("hello-plugin", None)


def test_unknown_model_lists_the_available_ones() -> None:
    with pytest.raises(DeepLenseError, match=r"unknown model .nope.*CCT"):
        plugins.get_architecture("nope")


def test_models_and_plugins_commands_json() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["CCT"]["parameters"] > 100_000
    assert rows["CCT"]["image_sizes"] == [64, 150]
    assert rows["ResNet18"]["plugin"] == "torchvision_resnet"
    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    names = {r["name"] for r in json.loads(result.output)}
    assert {"vit_pytorch", "timm_swin", "torchvision_resnet"} <= names


def test_models_table_and_show() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("CvT", "CCT", "TwinsSVT", "LeViT", "CaiT", "CrossViT", "PiT", "Swin", "T2TViT"):
        assert name in result.output
    result = runner.invoke(cli, ["models", "show", "cct", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["name"] == "CCT" and info["hyperparameters"]
    result = runner.invoke(cli, ["models", "show", "nope"])
    assert result.exit_code == 1 and "unknown model" in result.output


# What `--help` must not load: the heavy libraries, the terminal and YAML libraries (rich and
# PyYAML are imported on first output and first config), and the engine modules that pull
# them or the run folders in. Not timed (benchmarks/bench_cli_startup.py times it).
NOT_AT_HELP = (
    "torch",
    "lenstronomy",
    "ray",
    "onnxruntime",
    "numpy",
    "rich",
    "yaml",
    "deeplense_cli.runs.rundir",
    "deeplense_cli.tracking.session",
    "deeplense_cli.training.config",
    "deeplense_cli.training.start",
    "deeplense_cli.commands.display",
    "deeplense_cli.cluster.wait",
    "deeplense_cli.tune.experiment",
    "deeplense_cli.simulate.recipe",
    "deeplense_cli.data.imageset",
    "deeplense_cli.deploy.onnx_session",
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["models", "--help"],
        ["train", "--help"],
        ["tune", "--help"],
        ["data", "--help"],
        ["data", "simulate", "--help"],
        ["predict", "--help"],
        ["export", "onnx", "--help"],
    ],
)
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from deeplense_cli.cli import main\n"
        f"sys.argv = ['deeplense', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = [m for m in {NOT_AT_HELP!r} if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert out.stdout.strip().endswith("HEAVY="), out.stdout[-300:]


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "deeplense_cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "deeplense" in out.stdout


def test_every_hook_has_a_test() -> None:
    """A meta-test: each hookspec is exercised by name somewhere in the test suite."""
    names = [n for n in dir(hookspecs) if n.startswith("register_")]
    corpus = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in names:
        # count uses beyond this file's own mention list
        assert corpus.count(f"def {name}") >= 1, f"hook {name} has no test implementing it"


def test_the_plugin_api_is_the_top_level_package() -> None:
    """What plugin authors import is what ``deeplense_cli`` exports, and importing it stays
    light: the torch-based helpers load on first use."""
    code = (
        "import sys\n"
        "import deeplense_cli\n"
        "light = 'torch' not in sys.modules\n"
        "names = sorted(deeplense_cli.__all__)\n"
        "missing = [n for n in names if getattr(deeplense_cli, n, None) is None]\n"
        "print(light, names, missing, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    light, rest = out.stdout.split(" ", 1)
    assert light == "True"
    for name in ("Architecture", "DeepLenseError", "hookimpl", "check_architecture"):
        assert f"'{name}'" in rest
    for name in ("get_architecture", "architectures", "attention", "multi_head_attention"):
        assert f"'{name}'" in rest
    assert "[] True" in rest  # every name resolves; the attention helpers brought torch in

    import deeplense_cli
    from deeplense_cli.core.errors import DeepLenseError
    from deeplense_cli.layers.attention import split_projection
    from deeplense_cli.registry.architecture import Architecture

    assert deeplense_cli.DeepLenseError is DeepLenseError
    assert deeplense_cli.Architecture is Architecture
    assert deeplense_cli.split_projection is split_projection
    with pytest.raises(AttributeError):
        _ = deeplense_cli.no_such_name
