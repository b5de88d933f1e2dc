"""What a maintainer asks for first in a bug report (``deeplense checks``): versions, the
ONNX Runtime providers that load here (and why one does not), the CPU features that change
results or speed, GPUs, SLURM and Ray, and DEEPLENSE_HOME with its free space."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from deeplense_cli.core import paths
from deeplense_cli.core.cpu import cpu_flags, cpu_model
from deeplense_cli.core.device import available_cores
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.version import __version__
from deeplense_cli.deploy.defaults import PROVIDERS
from deeplense_cli.registry.manager import plugin_summary

# /proc/cpuinfo flags that change deeplense's behaviour: bf16 autocast on the CPU (avx512_bf16,
# amx_bf16), int8 speed and saturation (avx512_vnni, avx_vnni, amx_int8), kernels (avx512f).
CPU_FEATURES = (
    *("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"),
    *("amx_tile", "amx_bf16", "amx_int8"),
)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime() -> tuple[str | None, list[str]]:
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        if (version := _version(dist)) is not None:
            return f"{version} ({dist})", [dist]
    return None, []


def providers() -> dict[str, dict[str, Any]]:
    """Whether each execution provider loads a session here, and why not where it does not:
    ONNX Runtime may list a provider and then fall back to the CPU, so each is tried."""
    from deeplense_cli.deploy.onnx_session import create_session, import_ort

    try:
        ort = import_ort()
    except DeepLenseError as exc:
        return {"cpu": {"loads": False, "reason": str(exc)}}
    listed = set(ort.get_available_providers())
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "identity.onnx"
        _tiny_model(model)
        for device in PROVIDERS:
            try:
                create_session(model, device=device, cache_optimized=False, trt_cache_dir=tmp)
                out[device] = {"loads": True}
            except DeepLenseError as exc:
                reason = first_line(exc).removeprefix(f"--device {device}: ")
                out[device] = {"loads": False, "reason": reason}
    out["listed"] = {"loads": bool(listed), "reason": ", ".join(sorted(listed))}
    return out


def _tiny_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _gpus() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch_cuda": None, "devices": []}
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"torch_cuda": torch.version.cuda, "devices": names}


def _home() -> dict[str, Any]:
    home = paths.home()
    found = home
    while not found.exists() and found != found.parent:
        found = found.parent
    try:
        free: int | None = shutil.disk_usage(found).free
    except OSError:
        free = None
    return {
        "path": str(home),
        "set_by": "DEEPLENSE_HOME" if os.environ.get("DEEPLENSE_HOME") else "default",
        "exists": home.is_dir(),
        "writable": os.access(found, os.W_OK),
        "free_bytes": free,
        "data_root": str(paths.data_root()),
        "run_root": str(paths.run_root()),
    }


def environment() -> dict[str, Any]:
    """Everything ``deeplense checks`` prints, as plain data (its ``--json``)."""
    ort_version, _ = _onnxruntime()
    flags = cpu_flags()
    plugins = [
        {
            "name": p["name"],
            "distribution": p["distribution"],
            "version": _version(p["distribution"]) if p["distribution"] else None,
        }
        for p in plugin_summary()
    ]
    return {
        "deeplense": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": _version("torch"),
        "onnxruntime": ort_version,
        "ray": _version("ray"),
        "plugins": plugins,
        "execution_providers": providers(),
        "cpu": {
            "model": cpu_model(),
            "cores": available_cores(),
            "features": {f: f in flags for f in CPU_FEATURES},
        },
        "gpus": _gpus(),
        "slurm": {
            "sbatch": shutil.which("sbatch"),
            "job_id": os.environ.get("SLURM_JOB_ID"),
        },
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "home": _home(),
    }
