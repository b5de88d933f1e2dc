"""What machine this is (CPU model and flags), for benchmark records and caches."""

from __future__ import annotations

import platform


def _cpuinfo_line(*prefixes: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(prefixes):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_line("model name") or platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    line = _cpuinfo_line("flags", "Features")
    return set(line.split()) if line else set()
