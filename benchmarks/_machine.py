"""Describe the machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os

from deeplense_cli.core.cpu import cpu_model


def machine() -> str:
    cpu = cpu_model()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        load = f"load {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return f"{cpu}, {cores} cores, {load}".strip(", ")
