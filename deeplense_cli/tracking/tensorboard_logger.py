"""The ``tensorboard`` logger: event files in ``RUN/tensorboard/`` (``tensorboard --logdir
RUN``, or a folder of runs to compare them), written with PyTorch's ``SummaryWriter``.

Scalars per epoch under the names of ``metrics.jsonl``; the config as text and as hparams;
the final test metrics at the last epoch; the evaluation figures as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deeplense_cli.tracking.base import RunInfo, flatten_config

LOG_DIR = "tensorboard"
# The metrics the hparams table shows beside each run's settings.
HPARAM_METRICS = ("val_macro_auc", "val_accuracy", "val_loss", "test_accuracy", "test_macro_auc")


class TensorBoardLogger:
    def __init__(self) -> None:
        self.writer: Any = None
        self.info: RunInfo | None = None
        self.step = 0  # the last epoch logged: final metrics and figures are shown there
        self.purge_step: int | None = None

    def _writer(self) -> Any:
        # Made on first use: an export adding a file TensorBoard cannot show opens nothing.
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            assert self.info is not None
            self.writer = SummaryWriter(
                log_dir=str(self.info.path / LOG_DIR), purge_step=self.purge_step
            )
        return self.writer

    def start(self, info: RunInfo) -> dict[str, Any]:
        self.info, self.step = info, info.start_epoch
        if info.mode == "attach":
            return {"logdir": LOG_DIR}
        if info.mode == "resume" and info.start_epoch:
            # a killed run may have logged epochs past its last checkpoint: drop them
            self.purge_step = info.start_epoch + 1
        if info.mode == "new":
            self._log_config(info.config)
        return {"logdir": LOG_DIR}

    def _log_config(self, config: dict[str, Any]) -> None:
        # here: the logger class is loaded (as a plugin) by every command, --help included
        import yaml
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer()
        text = yaml.safe_dump(config, sort_keys=False)
        # Markdown: indented lines are shown as code, keeping the YAML's layout.
        writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))
        values = {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in flatten_config(config).items()
        }
        # the experiment and this run's values; not the "session ended" summary, which
        # would say the run succeeded before it began
        experiment, start, _end = hparams(values, dict.fromkeys(HPARAM_METRICS, 0.0))
        writer.file_writer.add_summary(experiment)
        writer.file_writer.add_summary(start)
        writer.flush()

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        writer = self._writer()
        for key, value in metrics.items():
            writer.add_scalar(key, value, epoch)
        self.step = epoch
        writer.flush()

    def log_test(self, metrics: dict[str, float]) -> None:
        writer = self._writer()
        for key, value in metrics.items():
            writer.add_scalar(key, value, self.step)
        writer.flush()

    def log_artifact(self, path: Path, folder: str) -> None:
        if path.suffix.lower() != ".png":
            return  # TensorBoard shows images, not files
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        tag = f"{folder}/{path.stem}" if folder else path.stem
        self._writer().add_image(tag, pixels, self.step, dataformats="HWC")
        self._writer().flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            if self.info is not None and self.info.mode != "attach":
                self.writer.add_text("status", status, self.step)
            self.writer.close()
            self.writer = None
