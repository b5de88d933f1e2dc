"""Progress reporters the training loop talks to; the rich one lives with the commands."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from deeplense_cli.training.defaults import METRICS


class Reporter(Protocol):
    """Receives progress from the training loop (rich display, JSON lines, Ray Tune...)."""

    def start(self, info: dict[str, Any]) -> None: ...
    def batch(
        self, epoch: int, step: int, steps: int, loss: float, images_per_s: float
    ) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def end(self, summary: dict[str, Any]) -> None: ...


class SilentReporter:
    """Reports nothing (``--output quiet``, tests, tune trials)."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        pass

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def end(self, summary: dict[str, Any]) -> None:
        pass


class EventReporter:
    """Turns the loop's calls into events, ``{"event": "start" | "batch" | "epoch" | "end",
    "time": ..., **payload}`` (the lines of ``--output jsonl``); :meth:`emit` says where
    they go."""

    def emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        self.emit({"event": event, "time": time.time(), **payload})

    def start(self, info: dict[str, Any]) -> None:
        self._emit("start", info)

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        payload = {"epoch": epoch, "step": step, "steps": steps, "loss": loss}
        self._emit("batch", {**payload, "images_per_s": images_per_s})

    def epoch(self, row: dict[str, Any]) -> None:
        self._emit("epoch", row)

    def end(self, summary: dict[str, Any]) -> None:
        self._emit("end", summary)

    def interrupted(self, info: dict[str, Any]) -> None:
        """The last event of a run stopped by Ctrl+C or SIGTERM (the command exits 130)."""
        self._emit("interrupted", info)


class JsonlReporter(EventReporter):
    """One JSON object per line on stdout: for scripts, clusters and log files."""

    def __init__(self, stream: Any = None, batch_every: float | None = None) -> None:
        self.stream = stream
        # Seconds between batch events; DEEPLENSE_JSONL_BATCH_EVERY=0 emits every batch.
        env = os.environ.get("DEEPLENSE_JSONL_BATCH_EVERY")
        self.batch_every = batch_every if batch_every is not None else float(env or 10.0)
        self._last = 0.0

    def emit(self, event: dict[str, Any]) -> None:
        out = self.stream or sys.stdout
        out.write(json.dumps(event, default=str) + "\n")
        out.flush()

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last >= self.batch_every or step == steps:
            self._last = now
            super().batch(epoch, step, steps, loss, images_per_s)


class CallbackReporter(EventReporter):
    """Hands every event, each batch included, to ``callback`` (the Python API's
    ``progress=``)."""

    def __init__(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self.callback = callback

    def emit(self, event: dict[str, Any]) -> None:
        self.callback(event)


def progress_bar(**options: Any) -> Any:
    """A ``tqdm.auto`` bar: a widget in Jupyter when ipywidgets is installed, else text
    (which Jupyter also updates in place)."""
    with warnings.catch_warnings():
        # tqdm.auto warns on import when Jupyter lacks ipywidgets; its text bar works there
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(**options)


class BarReporter:
    """One progress bar per epoch (running loss, images/s), left with that epoch's
    validation metrics: for notebooks and terminals."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.bar_epoch = 0
        self.epochs = 0

    def start(self, info: dict[str, Any]) -> None:
        self.epochs = int(info["epochs"])

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        if self.bar is None or self.bar_epoch != epoch:
            self._close()
            desc = f"epoch {epoch}/{max(self.epochs, epoch)}"
            self.bar = progress_bar(total=steps, desc=desc, unit="step", leave=True)
            self.bar_epoch = epoch
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def epoch(self, row: dict[str, Any]) -> None:
        self.epochs = int(row.get("planned_epochs") or self.epochs)  # a time budget re-plans
        if self.bar is not None:
            shown = {"train_loss": row.get("train_loss")}
            shown.update({k: row.get(k) for k in METRICS})  # those this task records
            postfix = {k: f"{v:.4f}" for k, v in shown.items() if v is not None}
            self.bar.set_postfix(postfix, refresh=False)  # closing draws it once
        self._close()

    def end(self, summary: dict[str, Any]) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
