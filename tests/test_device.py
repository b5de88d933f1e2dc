"""Where training runs: CPU mixed precision, OpenMP threads, bf16 fix-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.runs.rundir import RunDir


def test_bf16_on_a_cpu_without_native_bf16_warns(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplense_cli.core import device

    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    base = ["train", "-m", "cct", "--data", str(sim_root / "Model_III"), "--epochs", "1",
            "--max-train-per-class", "4", "--batch-size", "4", "--no-evaluate",
            "--device", "cpu"]  # on a GPU machine auto would train on CUDA  # fmt: skip
    starts = {}
    for amp in ("bf16", "auto"):
        args = [*base, "--amp", amp, "--run-dir", str(tmp_path / amp), "--output", "jsonl"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        starts[amp] = json.loads(result.stdout.splitlines()[0])
    assert starts["bf16"]["amp"] == "bfloat16"
    assert "bf16 autocast is emulated" in starts["bf16"]["warnings"][0]
    assert starts["auto"]["amp"] == "off" and starts["auto"]["warnings"] == []
    # the rich display prints it under the header
    args = [*base, "--amp", "bf16", "--run-dir", str(tmp_path / "rich")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "Warning: this CPU has no native bf16" in result.output


def test_openmp_spin_is_bounded_unless_the_user_chose() -> None:
    from deeplense_cli.core.device import OPENMP_SPIN_COUNT, configure_openmp

    env: dict[str, str] = {}
    assert configure_openmp(env) == f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"
    assert env == {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
    for mine in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(mine)
        assert configure_openmp(env) is None and env == mine


def test_the_cli_sets_openmp_before_torch_is_imported() -> None:
    """libgomp reads its environment once, when torch loads: set later, it does nothing."""
    code = (
        "import os, sys\n"
        "from deeplense_cli import cli\n"
        "seen = {}\n"
        "def spy(**kw):\n"
        "    seen['torch'] = 'torch' in sys.modules\n"
        "    seen['spin'] = os.environ.get('GOMP_SPINCOUNT')\n"
        "    sys.exit(0)\n"
        "cli.cli = spy\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == "{'torch': False, 'spin': '3000'}"


def test_cpu_mixed_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from deeplense_cli.core import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.autocast_dtype(cpu, "auto") is torch.bfloat16
    assert dev.autocast_dtype(cpu, "off") is None
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.autocast_dtype(cpu, "auto") is None  # emulated bf16 would only be slower
    assert dev.autocast_dtype(cpu, "bf16") is torch.bfloat16  # asked for: honoured
    with pytest.raises(DeepLenseError, match="fp16 needs a CUDA device"):
        dev.autocast_dtype(cpu, "fp16")


def test_bf16_training_on_the_cpu_keeps_float32_checkpoints(
    sim_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_train: Callable[..., RunDir],
) -> None:
    import torch

    from deeplense_cli.core.device import cpu_bf16_fixups
    from deeplense_cli.training import loop

    changed: list[int] = []
    monkeypatch.setattr(loop, "cpu_bf16_fixups", lambda m: changed.append(cpu_bf16_fixups(m)) or 0)
    args = ("--amp", "bf16", "--epochs", "1", "--no-evaluate", "--device", "cpu")
    run = quick_train(tmp_path / "bf16", *args, model="cvt")
    assert changed == [4]  # CvT's strided key/value projections train in float32
    quick_train(
        tmp_path / "fp32", "--amp", "off", "--epochs", "1", "--no-evaluate", "--device", "cpu"
    )
    assert changed == [4]  # not without autocast
    (row,) = run.read_metrics()
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}


def test_exact_float32_turns_tf32_convolutions_off_on_cuda_only_and_restores() -> None:
    """Checked on an H200: with cuDNN's default TF32 convolutions a run's probabilities
    differed from its ONNX export's by 4e-4. The flag handling itself runs without a GPU."""
    import torch

    from deeplense_cli.core.device import exact_float32

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    with exact_float32(torch.device("cpu")):
        assert conv.fp32_precision == before
    with pytest.raises(KeyError), exact_float32(torch.device("cuda")):
        assert conv.fp32_precision == "ieee"
        raise KeyError("the caller's error")
    assert conv.fp32_precision == before
