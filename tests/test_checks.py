"""deeplense checks: what a bug report needs, as text and as JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.deploy.environment import CPU_FEATURES

PLUGIN = """
from deeplense_cli import hookimpl

@hookimpl
def register_architectures(register):
    pass
"""


def test_checks_reports_versions_providers_cpu_gpus_cluster_and_home(
    deeplense_home: Path, fake_plugin: Callable[..., None]
) -> None:
    fake_plugin("probe", PLUGIN, dist="deeplense-probe")
    result = CliRunner().invoke(cli, ["checks", "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.stdout)
    assert env["deeplense"] and env["torch"] and env["onnxruntime"]
    assert {"name": "probe", "distribution": "deeplense-probe", "version": "1.0"} in env["plugins"]
    providers = env["execution_providers"]
    assert providers["cpu"] == {"loads": True}
    for gpu in ("cuda", "tensorrt"):  # loads, or says why not
        assert providers[gpu]["loads"] or providers[gpu]["reason"]
    assert set(env["cpu"]["features"]) == set(CPU_FEATURES) and env["cpu"]["cores"] >= 1
    assert isinstance(env["gpus"]["devices"], list)
    assert set(env["slurm"]) == {"sbatch", "job_id"} and "ray" in env
    home = env["home"]
    assert home["path"] == str(deeplense_home) and home["set_by"] == "DEEPLENSE_HOME"
    assert home["free_bytes"] > 0 and home["writable"]

    text = CliRunner().invoke(cli, ["checks"])
    assert text.exit_code == 0, text.output
    assert f"DEEPLENSE_HOME: {deeplense_home} (DEEPLENSE_HOME" in text.output
    assert "probe (deeplense-probe 1.0)" in text.output
    assert "  cpu: loads" in text.output and "CPU: " in text.output and "SLURM: " in text.output
