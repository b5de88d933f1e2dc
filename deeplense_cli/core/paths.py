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


def tagged(name: str, *identity: str | os.PathLike[str]) -> str:
    """``name`` with a short digest of the absolute paths in ``identity``: a folder name that
    two different things never share (two runs' ``model.onnx`` evaluated on one folder, or
    two folders both called ``test``), and that the same thing always gets again."""
    import hashlib  # here: it loads OpenSSL, and every command (--help too) imports paths

    key = "\n".join(os.path.abspath(os.fspath(p)) for p in identity)
    return f"{name}-{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
