"""Where deeplense keeps things: one home directory with a data root and a run root.

``DEEPLENSE_HOME`` (default ``~/.deeplense``) holds ``data/`` and ``runs/``.
``DEEPLENSE_DATA_ROOT`` and ``DEEPLENSE_RUN_ROOT`` override each root on its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("DEEPLENSE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".deeplense"


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("DEEPLENSE_DATA_ROOT")
    return Path(env).expanduser() if env else home() / "data"


def run_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("DEEPLENSE_RUN_ROOT")
    return Path(env).expanduser() if env else home() / "runs"
