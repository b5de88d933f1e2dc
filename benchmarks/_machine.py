"""Describe the machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        load = f"load {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{cpu}, {cores} cores, {load}".strip(", ")
