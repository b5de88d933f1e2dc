"""A run directory: everything one training run wrote, and how to read it back.

Layout::

    RUN/
      config.yaml        resolved configuration the run used
      classes.json       class names, in label order
      transform.json     the input transform (see deeplense_cli.data.transforms)
      split.json         data source, split seed and sizes
      target.json        train.task axion-mass: the target's scaling (deeplense_cli.runs.task)
      metrics.jsonl      one JSON object per epoch
      checkpoints/last.pt  everything needed to resume (weights, optimizer, RNG; atomic)
      checkpoints/best.pt  the best epoch's weights and record, for evaluate/export (atomic)
      evaluation/        metrics.json, roc.png, confusion_matrix.png
      tracking.json      with --log: the experiment-tracker runs (deeplense_cli.tracking)
      tensorboard/       with --log tensorboard: its event files
      .lock              held (flock) by the one process training into the run
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deeplense_cli.core import atomic, paths, yamlio
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.runs import CHECKPOINTS
from deeplense_cli.runs.task import TargetScaling, num_outputs, task_of

if TYPE_CHECKING:
    import torch.nn as nn

CHECKPOINT_FORMAT = "deeplense-checkpoint/1"
LOCK_NAME = ".lock"


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # ---- creation -------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, model_name: str, dataset_name: str) -> RunDir:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{model_name.lower()}-{dataset_name}-{secrets.token_hex(2)}"
        path = Path(root) / name
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def for_config(
        cls,
        config: dict[str, Any],
        path: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> RunDir:
        """The folder of a new run of the resolved ``config``: ``path``, which must be empty
        or absent, else a new dated folder under ``root`` (default: the run root) named
        after the model and the data."""
        if path:
            folder = Path(path)
            if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                holder = cls(folder).holder()
                if holder is not None:
                    raise DeepLenseError(
                        f"run directory {folder} is in use by {holder}; wait for it to end "
                        "(or stop it) before writing to this run"
                    )
                raise DeepLenseError(
                    f"run directory {folder} is not empty; use --resume to continue it"
                )
            folder.mkdir(parents=True, exist_ok=True)
            return cls(folder)
        # runs (and evaluations) that a killed writer left temporaries in, under this root
        atomic.sweep_tree(paths.run_root(root), max_depth=2)
        data = config["data"]
        dataset = data["dataset"] or "data"
        if data["data"]:
            dataset = Path(data["data"]).name or "data"
        return cls.create(paths.run_root(root), config["model"]["name"], dataset)

    def discard_unless_resumable(self, keep: bool = False) -> None:
        """After a run failed: remove its folder unless resuming would continue something,
        that is unless it has its ``config.yaml`` and a checkpoint or ``keep`` (interrupted,
        or a SLURM job whose folder holds the job's logs). A run that failed on bad data or
        settings, or diverged before its first checkpoint, leaves nothing behind."""
        if self.holder() is not None:
            return  # another process trains into it (this one was refused): it is theirs
        if not (self.config_path.exists() and (keep or self.checkpoint_path("last").exists())):
            shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        run = cls(path)
        if not run.config_path.is_file():
            raise DeepLenseError(
                f"{path} is not a deeplense run directory (no config.yaml); "
                "pass the directory that `deeplense train` printed"
            )
        run.sweep()  # what a killed writer left: every command that opens a run cleans it
        return run

    # ---- paths ----------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def evaluation_dir(self) -> Path:
        return self.path / "evaluation"

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in CHECKPOINTS:
            raise DeepLenseError(f"unknown checkpoint {which!r}; use {' or '.join(CHECKPOINTS)}")
        return self.checkpoint_dir / f"{which}.pt"

    # ---- small JSON/YAML records ----------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic.write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        try:
            data = yamlio.load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DeepLenseError(f"cannot read {self.config_path}: {exc}") from None
        if not isinstance(data, dict):
            raise DeepLenseError(f"{self.config_path} is not a mapping")
        return data

    def write_record(self, name: str, obj: Any) -> None:
        atomic.write_json(self.path / f"{name}.json", obj)

    def read_record(self, name: str) -> Any:
        path = self.path / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeepLenseError(f"cannot read {path}: {exc}") from None

    @property
    def classes(self) -> list[str]:
        return list(self.read_record("classes"))

    @property
    def transform(self) -> dict[str, Any]:
        return dict(self.read_record("transform"))

    @property
    def task(self) -> str:
        """``classify`` or ``axion-mass`` (deeplense_cli.runs.task)."""
        return task_of(self.read_config())

    @property
    def target_scaling(self) -> TargetScaling:
        """A regression run's target scaling (``target.json``)."""
        return TargetScaling.from_record(self.read_record("target"))

    def append_metrics(self, row: dict[str, Any]) -> None:
        # One line per epoch; a crash leaves whole lines (rewritten atomically).
        rows = self.read_metrics()
        rows.append(row)
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def truncate_metrics(self, epochs: int) -> None:
        """Keep only the first ``epochs`` rows (used when resuming)."""
        rows = [r for r in self.read_metrics() if int(r.get("epoch", 0)) <= epochs]
        atomic.write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    # ---- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, which: str, state: dict[str, Any]) -> Path:
        import torch

        path = self.checkpoint_path(which)
        # Through a Python file, so that a full disk surfaces as an OSError (torch's own
        # writer says only "unexpected pos").
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, fh)
        return path

    def sweep(self) -> int:
        """Remove temporary files that a killed writer left in the run (see atomic.sweep)."""
        return len(atomic.sweep_tree(self.path, max_depth=1))

    # ---- one writer at a time -------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, command: str) -> Iterator[None]:
        """Hold the run for ``command`` (``train``) for the block: a second process that
        would write the same run is refused in one line naming the holder, instead of both
        training and recording every epoch twice. The lock (``flock`` on ``RUN/.lock``) goes
        with the process, however it ends; where the filesystem has no locks, nothing is held.
        """
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            failure = atomic.write_failure(exc, self.path / LOCK_NAME)
            if failure is not None:
                raise failure from None
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeepLenseError(
                    f"run directory {self.path} is in use by {self.holder() or 'another process'}"
                    "; wait for it to end (or stop it) before writing to this run"
                ) from None
            except OSError:
                pass  # a filesystem without locks
            host = socket.gethostname()
            since = _dt.datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"deeplense {command} (pid {os.getpid()} on {host}, since {since})".encode(), 0
            )
            yield
        finally:
            os.close(fd)

    def holder(self) -> str | None:
        """Who holds the run's lock (:meth:`writer`), or None when nobody does."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.read(fd, 300).decode(errors="replace").strip() or "another process"
            except OSError:
                return None
            return None
        finally:
            os.close(fd)

    def load_checkpoint(self, which: str = "best") -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True``: no pickle code can run."""
        import pickle

        import torch

        path = self.checkpoint_path(which)
        if not path.is_file():
            raise DeepLenseError(f"{path} does not exist; has this run finished an epoch?")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights_only" not in str(exc):
                raise DeepLenseError(f"cannot load checkpoint {path}: {first_line(exc)}") from None
            # PyTorch's own message advises weights_only=False, which would run the code
            raise DeepLenseError(
                f"cannot load checkpoint {path}: it holds Python objects besides tensors, which "
                "could run code when loaded, so deeplense refuses it; use a checkpoint that "
                "deeplense train wrote"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise DeepLenseError(f"cannot load checkpoint {path}: {first_line(exc)}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise DeepLenseError(f"{path} is not a deeplense checkpoint")
        return state

    def build_model(self, which: str = "best") -> nn.Module:
        """Rebuild the run's model, load its weights and put it in eval mode."""

        config = self.read_config()
        model_cfg = config["model"]
        arch = get_architecture(model_cfg["name"])
        model = arch.build(
            image_size=int(self.transform["image_size"]),
            num_classes=num_outputs(task_of(config), self.classes),
            in_channels=int(self.transform.get("in_channels", 1)),
            **dict(model_cfg.get("params") or {}),
        )
        state = self.load_checkpoint(which)
        model.load_state_dict(state["model"])
        model.eval()
        return model
