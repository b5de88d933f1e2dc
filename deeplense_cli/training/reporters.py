"""Progress reporters the training loop talks to; the rich one lives with the commands."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Protocol


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


class JsonlReporter:
    """One JSON object per line on stdout: for scripts, clusters and log files."""

    def __init__(self, stream: Any = None, batch_every: float | None = None) -> None:
        self.stream = stream
        # Seconds between batch events; DEEPLENSE_JSONL_BATCH_EVERY=0 emits every batch.
        env = os.environ.get("DEEPLENSE_JSONL_BATCH_EVERY")
        self.batch_every = batch_every if batch_every is not None else float(env or 10.0)
        self._last = 0.0

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        out = self.stream or sys.stdout
        out.write(json.dumps({"event": event, "time": time.time(), **payload}, default=str) + "\n")
        out.flush()

    def start(self, info: dict[str, Any]) -> None:
        self._emit("start", info)

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        now = time.monotonic()
        if now - self._last >= self.batch_every or step == steps:
            self._last = now
            self._emit(
                "batch",
                {
                    "epoch": epoch,
                    "step": step,
                    "steps": steps,
                    "loss": loss,
                    "images_per_s": images_per_s,
                },
            )

    def epoch(self, row: dict[str, Any]) -> None:
        self._emit("epoch", row)

    def end(self, summary: dict[str, Any]) -> None:
        self._emit("end", summary)

    def interrupted(self, info: dict[str, Any]) -> None:
        """The last event of a run stopped by Ctrl+C or SIGTERM (the command exits 130)."""
        self._emit("interrupted", info)
