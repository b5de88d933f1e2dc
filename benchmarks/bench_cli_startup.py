"""Wall time of `deeplense --help` (goal: under 0.3 s), next to a bare Python start-up and a
command that does import torch, measured side by side in one run.

    python benchmarks/bench_cli_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    exe = shutil.which("deeplense") or str(Path(sys.executable).parent / "deeplense")
    cases = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "deeplense --help": [exe, "--help"],
        "deeplense models --help": [exe, "models", "--help"],
        "deeplense train --help": [exe, "train", "--help"],
        "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
    }
    print(f"Machine: {machine()}; {args.repeat} runs each\n")
    print("| command | median s | best s |")
    print("| --- | ---: | ---: |")
    for name, cmd in cases.items():
        med, best = timed(cmd, args.repeat)
        print(f"| {name} | {med:.3f} | {best:.3f} |", flush=True)


if __name__ == "__main__":
    main()
