"""Wall time of `deeplense --help` (goal: under 0.2 s), next to a bare Python start-up measured
in the same run, as a median of N runs each and as a ratio to that baseline (the ratio moves
less than the times on a loaded machine), with a command that does import torch for scale.

    python benchmarks/bench_cli_startup.py [--repeat 10] [--no-torch]

With PYTHONDONTWRITEBYTECODE set, Python compiles deeplense's modules from source on every
run (no __pycache__), which an installed package never does: the script says which it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine


def timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch import (2 s)")
    args = parser.parse_args()
    exe = shutil.which("deeplense") or str(Path(sys.executable).parent / "deeplense")
    cases = {
        "deeplense --help": [exe, "--help"],
        "deeplense models --help": [exe, "models", "--help"],
        "deeplense train --help": [exe, "train", "--help"],
        "deeplense data --help": [exe, "data", "--help"],
        "deeplense data simulate --help": [exe, "data", "simulate", "--help"],
    }
    if not args.no_torch:
        cases["python -c 'import torch' (for scale)"] = [sys.executable, "-c", "import torch"]
    subprocess.run([exe, "--help"], stdout=subprocess.DEVNULL, check=True)  # warm the caches
    cached = "off (PYTHONDONTWRITEBYTECODE)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    print(f"Machine: {machine()}; {args.repeat} runs each; bytecode cache {cached}\n")
    print("| command | median s | best s | median / python -c pass |")
    print("| --- | ---: | ---: | ---: |")
    base, best = timed([sys.executable, "-c", "pass"], args.repeat)
    print(f"| python -c pass (baseline) | {base:.3f} | {best:.3f} | 1.0 |", flush=True)
    for name, cmd in cases.items():
        med, best = timed(cmd, args.repeat)
        print(f"| {name} | {med:.3f} | {best:.3f} | {med / base:.1f} |", flush=True)


if __name__ == "__main__":
    main()
