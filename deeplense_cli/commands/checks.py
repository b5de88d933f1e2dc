"""``deeplense checks``: what to paste into a bug report."""

from __future__ import annotations

from typing import Any

import click

from deeplense_cli.core.console import console, print_json
from deeplense_cli.deploy.defaults import PROVIDERS


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def checks(as_json: bool) -> None:
    """What a maintainer asks for first: deeplense, torch, ONNX Runtime, Ray and plugin
    versions; which ONNX Runtime execution providers load here (CUDA, TensorRT) and why one
    does not; the CPU features that change results or speed (AVX-512, VNNI, bf16, AMX);
    GPUs; SLURM and Ray; DEEPLENSE_HOME and its free space. Paste it into bug reports."""
    from deeplense_cli.deploy.environment import environment

    env = environment()
    if as_json:
        print_json(env)
        return
    for line in _lines(env):
        console().print(line, markup=False, soft_wrap=True, highlight=False)


def _lines(env: dict[str, Any]) -> list[str]:
    def version(v: str | None) -> str:
        return v or "not installed"

    plugins = ", ".join(
        f"{p['name']} ({p['distribution'] or 'built in'}{' ' + p['version'] if p['version'] else ''})"
        for p in env["plugins"]
    )
    providers = []
    for name in PROVIDERS:
        p = env["execution_providers"].get(name)
        if p is not None:
            providers.append(f"  {name}: " + ("loads" if p["loads"] else f"no: {p['reason']}"))
    cpu = env["cpu"]
    features = ", ".join(f for f, on in cpu["features"].items() if on) or "none of those checked"
    gpus = env["gpus"]
    home = env["home"]
    free = home["free_bytes"]
    slurm = env["slurm"]
    return [
        f"deeplense {env['deeplense']} (Python {env['python']}, {env['platform']})",
        f"torch {version(env['torch'])}, CUDA {gpus['torch_cuda'] or 'none'}",
        f"ONNX Runtime {version(env['onnxruntime'])}",
        f"Ray {version(env['ray'])}"
        + (f", RAY_ADDRESS {env['ray_address']}" if env["ray_address"] else ""),
        f"plugins: {plugins or 'none'}",
        "execution providers:",
        *providers,
        f"CPU: {cpu['model']}, {cpu['cores']} cores usable; features: {features}",
        f"GPUs: {', '.join(gpus['devices']) or 'none visible to torch'}",
        "SLURM: "
        + (f"sbatch at {slurm['sbatch']}" if slurm["sbatch"] else "no sbatch")
        + (f", inside job {slurm['job_id']}" if slurm["job_id"] else ""),
        f"DEEPLENSE_HOME: {home['path']} ({home['set_by']}"
        + ("" if home["exists"] else ", not created yet")
        + ("" if home["writable"] else ", NOT WRITABLE")
        + (f", {free / 1e9:.1f} GB free" if free is not None else "")
        + ")",
        f"  data root {home['data_root']}, run root {home['run_root']}",
    ]
