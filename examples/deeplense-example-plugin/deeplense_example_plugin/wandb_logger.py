"""A Weights & Biases logger: ``deeplense train --log wandb`` (``pip install
'deeplense-example-plugin[wandb]'``), an example of the ``register_loggers`` hook.

One W&B run per deeplense run, in the project named by the run's ``tracking.experiment``
("deeplense", or a search's name for its trials). ``WANDB_MODE=offline`` keeps everything on
disk (``wandb sync`` uploads it later); the files go to ``WANDB_DIR``, else the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WandbLogger:
    """The methods deeplense calls (the ``deeplense_cli.tracking.Logger`` protocol)."""

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, info: Any) -> dict[str, Any]:
        import wandb  # here, not at the top: deeplense imports plugins on every start

        record = info.record or {}
        self.run = wandb.init(
            project=record.get("project") or info.experiment,
            name=info.name,
            group=info.experiment,
            id=record.get("id"),  # a resumed run, or files added later, go to the same run
            resume="allow" if record.get("id") else None,
            config=info.config if info.mode == "new" else None,
            dir=os.environ.get("WANDB_DIR") or str(info.path),
            # console="off": W&B would otherwise wrap stdout, which carries --output jsonl
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            reinit="create_new",
        )
        return {"id": self.run.id, "project": self.run.project}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch)

    def log_test(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)

    def log_artifact(self, path: Path, folder: str) -> None:
        base = path.parent
        for _ in Path(folder).parts:  # keep the file's folder in the run: evaluation/roc.png
            base = base.parent
        self.run.save(str(path), base_path=str(base), policy="now")

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)
