"""Training: one loop used by `deeplense train`, `tune` and `benchmark`.

AdamW with linear warm-up and cosine decay stepped per batch, gradient clipping,
optional label smoothing and weight EMA, physics-respecting augmentation (the symmetries of
the data: the half turn on the DeepLense simulations, whose main lens has a fixed orientation;
the eight flips/rotations of the square on other data), AMP on
CUDA, atomic `last`/`best` checkpoints and exact resume from the last completed epoch.
Under several processes (``training.distributed``) each rank trains on its share of every
global batch through DistributedDataParallel and rank 0 alone writes the run.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deeplense_cli.core.device import (
    amp_warning,
    autocast_dtype,
    available_cores,
    cpu_bf16_fixups,
    exact_float32,
    prepare_cpu_threads,
    resolve_device,
)
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.version import __version__
from deeplense_cli.data.degrade import degrade
from deeplense_cli.data.splits import load_splits
from deeplense_cli.data.transforms import apply_transform, transform_for
from deeplense_cli.evaluation.evaluate import evaluate_run
from deeplense_cli.evaluation.inference import predict_logits
from deeplense_cli.evaluation.metrics import classification_metrics, mean_log_loss, softmax
from deeplense_cli.registry.manager import get_architecture
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.runs.task import head_names, is_regression, num_outputs, task_of
from deeplense_cli.tracking import tracked
from deeplense_cli.training import distributed
from deeplense_cli.training.augment import augment, augment_group
from deeplense_cli.training.budget import Plan, validation_steps
from deeplense_cli.training.init import apply_freeze, apply_init, find_source, freeze_backbone_modes
from deeplense_cli.training.optim import make_optimizer
from deeplense_cli.training.reporters import Reporter, SilentReporter
from deeplense_cli.training.stopping import improved, progressed, selection_warning
from deeplense_cli.training.tasks import Regression, target_record, task_splits

if TYPE_CHECKING:
    import torch

    from deeplense_cli.data.imageset import ImageSet
    from deeplense_cli.data.splits import Splits


@dataclass
class TrainResult:
    run: RunDir
    epochs_completed: int
    best_epoch: int | None
    best: dict[str, Any] | None
    stopped_early: bool
    evaluation: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# Checkpoint entries only resuming needs; best.pt leaves them out (see serving_state).
RESUME_ONLY_KEYS = (
    "train_model",
    "ema",
    "optimizer",
    "scheduler",
    "scaler",
    "torch_rng",
    "cuda_rng",
    "metrics_row",
)


def serving_state(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint for evaluate/export/predict: ``state`` without :data:`RESUME_ONLY_KEYS`."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY_KEYS}


def _use_channels_last(model: torch.nn.Module, device: torch.device, setting: Any) -> bool:
    import torch

    if setting in (True, "true", "on"):
        return device.type == "cuda"
    if setting in (False, "false", "off", None):
        return False
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    return device.type == "cuda" and convs > linears


def init_run(config: dict[str, Any], run: RunDir, splits: Splits) -> None:
    """Write everything a run needs to be evaluated, exported or resumed later."""
    # The transform first: a setting that does not fit the data must fail before config.yaml
    # makes the folder look like a resumable run.
    splits = task_splits(config, splits)  # a regressor's statistics: the images with a mass
    standardize = bool(config["data"].get("standardize", True))
    crop = config["data"].get("crop")
    source = find_source(config["train"]["init"]) if config["train"].get("init") else None
    if source is not None and standardize and crop == source.transform.get("crop"):
        # fine-tuning: the inputs standardised as the source model was trained to see them
        transform = transform_for(splits, False, crop)
        for key in ("mean", "std"):
            if key in source.transform:
                transform[key] = source.transform[key]
    else:
        transform = transform_for(splits, standardize, crop)
    run.write_config({**config, **_layout_entry(), "deeplense_version": __version__})
    if source is not None:
        run.write_record("init", source.record())
    run.write_record("classes", list(splits.classes))
    target = target_record(config, splits)
    if target is not None:  # --task axion-mass: the target's scaling
        run.write_record("target", target)
    run.write_record("transform", transform)
    run.write_record("split", splits.record())


def _layout_entry() -> dict[str, Any]:
    """config.yaml's ``distributed`` entry: the processes the run trains with (none for one)."""
    lay = distributed.layout()
    return {"distributed": lay.record()} if lay.distributed else {}


def record_layout(run: RunDir) -> None:
    """On resume: the config records the layout the run continues with."""
    raw = run.read_config()
    if raw.get("distributed") != _layout_entry().get("distributed"):
        raw.pop("distributed", None)
        version = raw.pop("deeplense_version", __version__)
        run.write_config({**raw, **_layout_entry(), "deeplense_version": version})


class Trainer:
    """Holds the model, optimiser and state of one run; `fit` runs the epochs."""

    def __init__(
        self, config: dict[str, Any], run: RunDir, splits: Splits, fresh: bool = True
    ) -> None:
        """``fresh``: a new run (``train.init`` weights are loaded); False when resuming."""
        import torch

        self.config, self.run, self.splits = config, run, splits
        t = config["train"]
        self.t = t
        self.layout = distributed.layout()
        self.device = resolve_device(distributed.train_device(str(t["device"])))
        if self.device.type == "cpu":
            # ranks on one machine share its cores
            share = max(1, available_cores() // self.layout.local_world_size)
            prepare_cpu_threads(t.get("num_threads") or share)
        self.seed = int(t["seed"])
        torch.manual_seed(self.seed)
        self.transform = run.transform  # written by init_run: the same on --resume
        arch = get_architecture(config["model"]["name"])
        self.task = task_of(config)
        self.outputs = num_outputs(self.task, splits.classes)
        self.model = arch.build(
            image_size=self.transform["image_size"],
            num_classes=self.outputs,
            in_channels=self.transform["in_channels"],
            **config["model"]["params"],
        )
        self.init_notes: list[str] = []
        self.freeze = str(t.get("freeze") or "none")
        if t.get("init") and fresh:
            source = find_source(t["init"])
            heads = head_names(config, splits.classes)
            self.init_notes = apply_init(self.model, source, heads, self.freeze)
        elif self.freeze == "backbone":  # resuming: the same parameters train as before
            apply_freeze(self.model, self.outputs)
        self.model = self.model.to(self.device)
        self.channels_last = _use_channels_last(self.model, self.device, t.get("channels_last"))
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self._wrap(t)  # the module the training steps run (DDP under several ranks)
        self.amp_dtype = autocast_dtype(self.device, str(t["amp"]))
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            cpu_bf16_fixups(self.model)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        self.optimizer = make_optimizer(
            self.model, float(t["weight_decay"]), float(t["lr"]), self.device
        )
        self.batch_size = int(t["batch_size"])
        if self.batch_size < self.layout.world_size:
            raise DeepLenseError(
                f"train.batch_size {self.batch_size} is the global batch and cannot be shared "
                f"by {self.layout.world_size} processes; use at least {self.layout.world_size}"
            )
        n_train = len(splits.train_idx)
        if n_train == 0:
            raise DeepLenseError(
                "the training split is empty; use more data or a smaller val_fraction"
            )
        self.steps_per_epoch = max(1, n_train // self.batch_size)  # drop the ragged last batch
        self.plan = Plan(
            steps_per_epoch=self.steps_per_epoch,
            max_epochs=int(t["epochs"]),
            warmup_steps=round(float(t["warmup_epochs"]) * self.steps_per_epoch),
            min_ratio=float(t["min_lr_ratio"]),
            max_minutes=float(t["max_minutes"]) if t.get("max_minutes") else None,
        )
        # The lambda reads the plan's fields: a time budget re-plans them.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: self.plan.lr_factor(step),  # a function: not in state_dict
        )
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        self.loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(t["label_smoothing"]))
        self.loss_sum = torch.nn.CrossEntropyLoss(
            label_smoothing=float(t["label_smoothing"]), reduction="sum"
        )
        self.regression: Regression | None = None
        if is_regression(self.task):
            loss = str(t.get("regression_loss") or "huber")
            self.regression = Regression(loss, run.target_scaling, self.device)
            self.loss_fn, self.loss_sum = self.regression.loss, self.regression.loss_sum
        self.ema: torch.optim.swa_utils.AveragedModel | None = None
        if float(t["ema_decay"]) > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=get_ema_multi_avg_fn(float(t["ema_decay"])),
                use_buffers=True,
            )
        self.epoch = 0
        self.last_row: dict[str, Any] | None = None  # the restored epoch's metrics row
        self.best: dict[str, Any] | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.metric = str(t["early_stopping_metric"])
        self.min_delta = float(t.get("min_delta", 0.0))
        self.augment_group = augment_group(t.get("augment", True))
        self.degrade = float(t.get("degrade") or 0.0)
        self.progress_ref: float | None = None  # the metric at the last progress (patience)

    def _wrap(self, t: dict[str, Any]) -> torch.nn.Module:
        """Under several ranks: the model in DistributedDataParallel (which broadcasts rank 0's
        weights, so ``train.init`` and the seed give every rank the same start), its BatchNorm
        layers synchronised when ``train.sync_bn``; otherwise the model itself."""
        import torch

        if not self.layout.distributed:
            return self.model
        if t.get("sync_bn"):
            if self.device.type != "cuda":
                raise DeepLenseError(
                    "train.sync_bn needs CUDA (PyTorch synchronises BatchNorm on GPUs only); "
                    "leave it off on the CPU"
                )
            # in place: self.model (checkpoints, EMA, validation) holds the same layers
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # DDP's note on speed for layers whose gradients come in another memory layout than
        # its buckets (PiT's depthwise convolutions): not a user's to act on
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        # gradient_as_bucket_view: the gradients live in the all-reduce buffers (no copy)
        return torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=ids, gradient_as_bucket_view=True
        )

    # ---- checkpoints ----------------------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        import torch

        def cpu(module: torch.nn.Module) -> dict[str, Any]:
            return {k: v.detach().cpu() for k, v in module.state_dict().items()}

        weights = cpu(self.eval_model())
        return {
            "model": weights,
            # Without EMA the trained weights are the evaluated ones: the same dict, which
            # torch.save stores once (a second .cpu() copy would double a CUDA run's file).
            "train_model": weights if self.ema is None else cpu(self.model),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "progress_ref": self.progress_ref,
            **self.plan.state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "arch": self.config["model"]["name"],
        }

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        self.model.load_state_dict(state["train_model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.last_row = state.get("metrics_row")
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.bad_epochs = int(state.get("bad_epochs", 0))
        # Checkpoints from before min_delta: the best epoch's value is the reference.
        ref = state.get("progress_ref", (self.best or {}).get(self.metric))
        self.progress_ref = None if ref is None else float(ref)
        self.plan.restore(state)
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # ---- one epoch ------------------------------------------------------------------
    def _batch(
        self, idx: np.ndarray, rng: np.random.Generator | None, rows: np.ndarray | None = None
    ) -> torch.Tensor:
        """The images ``idx`` (sorted), transformed and augmented; with ``rows``, only those
        positions of the batch (a rank's share), augmented as they would be in the whole."""
        import torch

        idx = np.sort(idx)  # sequential reads from the memory-mapped cache
        raw = np.asarray(self.splits.train.images[idx if rows is None else idx[rows]])
        if rng is not None and self.degrade > 0:
            raw = degrade(raw, rng, self.degrade, rows=rows, total=len(idx))
        x = torch.from_numpy(apply_transform(raw, self.transform))
        if rng is not None:
            x = augment(x, rng, self.augment_group, rows=rows, total=len(idx))
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_epoch(self, reporter: Reporter) -> dict[str, Any]:
        import torch

        epoch = self.epoch + 1
        rng = np.random.default_rng([self.seed, epoch])  # data order depends on (seed, epoch) only
        order = rng.permutation(self.splits.train_idx)
        labels_all = self.splits.train.labels
        aug_rng = rng if self.augment_group != "none" or self.degrade > 0 else None
        self.net.train()
        if self.freeze == "backbone":
            freeze_backbone_modes(self.model, self.outputs)
        world = self.layout.world_size
        clip = float(self.t["grad_clip"])
        total_loss, seen, start = 0.0, 0, time.perf_counter()
        probe, probe_start = self.plan.probe_steps, start
        for step in range(self.steps_per_epoch):
            if self.scheduler.last_epoch >= self.plan.total_steps:
                break  # a time budget shorter than one epoch
            if step == 1:
                probe_start = time.perf_counter()  # the first step pays one-off costs
            if self.plan.needs_probe and step == probe + 1:
                # rank 0's clock plans for all: every rank then ends on the same step
                self._plan_early(distributed.broadcast((time.perf_counter() - probe_start) / probe))
            idx = np.sort(order[step * self.batch_size : (step + 1) * self.batch_size])
            rows = distributed.batch_rows(len(idx)) if world > 1 else None
            mine = idx if rows is None else idx[rows]
            x = self._batch(idx, aug_rng, rows)
            if self.regression is not None:
                y = self.regression.targets(self.splits.train, mine)
            else:
                y = torch.from_numpy(labels_all[mine].astype(np.int64)).to(self.device)
            with self._autocast():
                out = self.net(x)
                # Several ranks: each rank's summed loss over the global batch, times the ranks
                # (DDP averages gradients over ranks): the gradient of the global batch's mean,
                # however the batch divides.
                loss = (
                    self.loss_fn(out, y)
                    if world == 1
                    else self.loss_sum(out, y) * (world / len(idx))
                )
            if not torch.isfinite(loss):
                raise DeepLenseError(
                    f"training diverged at epoch {epoch}, step {step + 1} (loss {loss.item()}); "
                    "lower --lr or increase warm-up"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            # this rank's images' summed loss (several ranks: loss.item() * len(idx) / world)
            total_loss += float(loss.item()) * len(idx) / world
            seen += len(mine)
            elapsed = time.perf_counter() - start
            reporter.batch(
                epoch, step + 1, self.steps_per_epoch, total_loss / seen, world * seen / elapsed
            )
        elapsed = time.perf_counter() - start
        if world > 1:  # the epoch's loss over every rank's images, as one process reports it
            total_loss, images = distributed.all_sum([total_loss, seen])
            seen = round(images)
            elapsed = distributed.broadcast(elapsed)
        return {
            "epoch": epoch,
            "train_loss": total_loss / max(1, seen),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_images_per_s": seen / elapsed if elapsed > 0 else None,
            "train_seconds": elapsed,
        }

    def _plan_early(self, per_step: float) -> None:
        """Fit the time budget from the first steps' speed (``per_step`` seconds a step)."""
        validation = validation_steps(
            len(self.splits.val_idx),
            int(self.t["eval_batch_size"]),
            self.batch_size,
            self._precise_bn_plan()[0],
            mixed_precision=self.amp_dtype is not None,
        )
        self.plan.plan_early(per_step, validation, self.scheduler.last_epoch, self.epoch)

    def _autocast(self) -> Any:
        """The run's autocast context (a no-op without mixed precision)."""
        import torch

        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def _batch_norms(self) -> list[Any]:
        import torch

        return [
            m
            for m in self.eval_model().modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]

    def _precise_bn_plan(self) -> tuple[int, list[Any]]:
        """(images to recompute the BatchNorm statistics from, the BatchNorm layers)."""
        n = int(self.t.get("precise_bn_images") or 0)
        # a frozen backbone keeps the statistics it was trained with
        norms = self._batch_norms() if n > 0 and self.freeze == "none" else []
        return (min(n, len(self.splits.train_idx)) if norms else 0), norms

    def precise_batch_norm(self) -> None:
        """Recompute the BatchNorm running statistics of the evaluated model from
        ``precise_bn_images`` training images at the current weights (an exact average,
        not the momentum average of batches seen while the weights moved).

        Momentum statistics lag behind fast-moving weights, which made CvT (BatchNorm inside
        its attention projections) validate far below its training accuracy (BENCHMARKS.md,
        'Inputs, BatchNorm and per-architecture defaults'). The images are drawn from the seed
        only (the same ones each epoch), no torch RNG is used, and only the BatchNorm layers
        run in training mode (no dropout), so runs and resumes stay repeatable.

        In float32, as `validate`, evaluate and the ONNX export run the model: statistics
        gathered under bf16 autocast did not fit float32 inputs (see `validate`)."""
        import torch

        count, norms = self._precise_bn_plan()
        if not count:
            return
        model = self.eval_model()
        # The same images every epoch: validation then moves with the weights only.
        rng = np.random.default_rng([self.seed, 7])
        idx = rng.choice(self.splits.train_idx, size=count, replace=False)
        momenta = [m.momentum for m in norms]
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
            m.train()
        try:
            with torch.no_grad(), exact_float32(self.device):
                for start in range(0, count, self.batch_size):
                    model(self._batch(idx[start : start + self.batch_size], None))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            model.eval()

    def validate(self) -> dict[str, Any]:
        """The evaluated model's metrics on the validation split, in float32 whatever the
        training precision: the figures and the best checkpoint are then those of the model
        that evaluate, export and predict serve. A bf16-trained CvT on Model_II validated at
        98.59% under autocast (with autocast-made BatchNorm statistics) but 97.03% in float32;
        with float32 statistics it is 98.67% in float32 (BENCHMARKS.md)."""
        if len(self.splits.val_idx) == 0:
            return {}
        return self._score("val", self.splits.train, self.splits.val_idx)

    def score_test(self) -> dict[str, Any]:
        """The evaluated model's metrics on the test split, for `train.test_curve`: test
        accuracy against training minutes. Only recorded: never used to pick the best epoch,
        stop early or plan the time budget."""
        if len(self.splits.test_idx) == 0:
            return {}
        start = time.perf_counter()
        scores = self._score("test", self.splits.test, self.splits.test_idx)
        scores["test_seconds"] = time.perf_counter() - start
        return scores

    def _score(self, split: str, data: ImageSet, idx: np.ndarray) -> dict[str, Any]:
        # Several ranks: each scores a contiguous part of the split and all receive the whole,
        # in order: every image once, none repeated or dropped at the split's end.
        logits = predict_logits(
            self.eval_model(),
            data.images,
            self.transform,
            indices=idx[distributed.share(len(idx))],
            batch_size=int(self.t["eval_batch_size"]),
            device=self.device,
        )
        logits = distributed.gather(logits)
        if not np.isfinite(logits).all():
            # a diverged model: sklearn's AUC would fail on NaN probabilities with a traceback
            raise DeepLenseError(
                f"training diverged: the model's outputs on the {split} images are not "
                "finite (NaN or inf); lower --lr or increase warm-up"
            )
        if self.regression is not None:
            return self.regression.score(split, logits, data, idx)
        labels = data.labels[idx]
        probs = softmax(logits.astype(np.float64))
        m = classification_metrics(
            labels, probs, self.splits.classes, loss=mean_log_loss(probs, labels)
        )
        return {
            f"{split}_loss": m["loss"],
            f"{split}_accuracy": m["accuracy"],
            f"{split}_macro_auc": m["macro_auc"],
            f"{split}_auc": m["auc"],
        }

    def fit(self, reporter: Reporter | None = None) -> TrainResult:
        reporter = reporter or SilentReporter()
        patience = int(self.t.get("patience") or 0)
        stopped_early = False
        main = self.layout.is_main  # rank 0 alone writes the run
        if main:
            self.run.sweep()  # what a killed run left half-written
            rows = self.run.read_metrics()
            if self.last_row is not None and not any(r.get("epoch") == self.epoch for r in rows):
                self.run.append_metrics(self.last_row)  # killed between last.pt and metrics.jsonl
        while self.epoch < self.plan.epochs:
            epoch_start, steps_before = time.perf_counter(), self.scheduler.last_epoch
            row = self.train_epoch(reporter)
            self.precise_batch_norm()
            row.update(self.validate())
            self.epoch = row["epoch"]
            # rank 0's clock for the time budget: all ranks plan the same steps
            epoch_seconds = distributed.broadcast(time.perf_counter() - epoch_start)
            done = self.scheduler.last_epoch
            self.plan.end_epoch(epoch_seconds, done - steps_before, done, self.epoch)
            if self.t.get("test_curve"):
                row.update(self.score_test())  # after the budget's clock: outside --max-minutes
            row["planned_epochs"] = self.plan.epochs
            is_best = improved(row, self.best, self.metric)
            if is_best:
                self.best = {k: v for k, v in row.items() if k.startswith("val_")}
                self.best_epoch = self.epoch
            if progressed(row.get(self.metric), self.progress_ref, self.metric, self.min_delta):
                self.progress_ref = float(row[self.metric])
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            row["best"] = is_best
            if main:
                state = {**self.state(), "metrics_row": row}
                if is_best:
                    # best.pt is for evaluate/export/predict: the weights and the epoch's
                    # record, not the optimizer moments (2x the weights) that only resuming
                    # from last.pt needs.
                    self.run.save_checkpoint("best", serving_state(state))
                self.run.save_checkpoint("last", state)
                # Only now: metrics.jsonl never records an epoch whose checkpoint was not written.
                self.run.append_metrics(row)
                reporter.epoch(row)
            # rank 0 decides, so that every rank stops on the same epoch
            stop = distributed.broadcast(
                bool(patience and self.bad_epochs >= patience and self.epoch < self.plan.epochs)
            )
            if stop:
                stopped_early = True
                break
        return TrainResult(
            run=self.run,
            epochs_completed=self.epoch,
            best_epoch=self.best_epoch,
            best=self.best,
            stopped_early=stopped_early,
            history=self.run.read_metrics() if main else [],
        )


def train(
    config: dict[str, Any],
    run: RunDir,
    reporter: Reporter | None = None,
    resume: bool = False,
    evaluate: bool = True,
    splits: Splits | None = None,
    on_data: Callable[[Splits], None] | None = None,
) -> TrainResult:
    """Train ``config`` into ``run`` (a new run, or an existing one when ``resume``); a run
    that another process is training is refused (``RunDir.writer``). Under several ranks
    (``training.distributed``) every rank calls this; rank 0 holds the run."""
    lay = distributed.layout()
    command = "train --resume" if resume else "train"
    if lay.distributed:
        command += f" (rank 0 of {lay.world_size})"
    with run.writer(command) if lay.is_main else contextlib.nullcontext():
        return _train(config, run, reporter, resume, evaluate, splits, on_data)


def _train(
    config: dict[str, Any],
    run: RunDir,
    reporter: Reporter | None,
    resume: bool,
    evaluate: bool,
    splits: Splits | None,
    on_data: Callable[[Splits], None] | None,
) -> TrainResult:
    main = distributed.layout().is_main
    reporter = reporter if reporter is not None and main else SilentReporter()
    # rank 0 first: it may build the data cache and writes the run's records
    with distributed.main_first():
        if splits is None:
            splits = load_splits(config)
        splits = task_splits(config, splits)  # a regressor: the images with a mass
        if on_data is not None:
            on_data(splits)
        if resume:
            _check_same_data(run, splits)
        if main and resume:
            record_layout(run)
        elif main:
            init_run(config, run, splits)
            run.truncate_metrics(0)
    resuming = resume and run.checkpoint_path("last").exists()
    trainer = Trainer(config, run, splits, fresh=not resuming)
    if resuming:  # every rank from the same checkpoint
        trainer.restore(run.load_checkpoint("last"))
    if resume and main:
        run.truncate_metrics(trainer.epoch)
    # the run's loggers (tracking.loggers) see the same events as the display
    track = tracked(config, run, reporter, resumed=resume) if main else None
    with track or contextlib.nullcontext(reporter) as reporter:
        return _train_and_report(config, run, reporter, trainer, splits, evaluate)


def _train_and_report(
    config: dict[str, Any],
    run: RunDir,
    reporter: Reporter,
    trainer: Trainer,
    splits: Splits,
    evaluate: bool,
) -> TrainResult:
    # what --skip-bad left out, for the display and the JSON-lines start event
    sets = [splits.train] if splits.test is splits.train else [splits.train, splits.test]
    skipped = sum(len(s.skipped) for s in sets)
    data_warnings = [w for s in sets for w in s.warnings]
    reporter.start(
        {
            "run_dir": str(run.path),
            "model": config["model"]["name"],
            "device": str(trainer.device),
            "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
            "classes": splits.classes,
            "task": trainer.task,
            "train": len(splits.train_idx),
            "val": len(splits.val_idx),
            "test": len(splits.test_idx),
            "epochs": trainer.plan.epochs,
            "start_epoch": trainer.epoch,
            "steps_per_epoch": trainer.steps_per_epoch,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "skipped_files": skipped,
            "init": config["train"].get("init"),
            "notes": trainer.init_notes,
            "warnings": [
                w
                for w in [
                    amp_warning(trainer.device, trainer.amp_dtype),
                    selection_warning(len(splits.val_idx)),
                ]
                if w
            ]
            + data_warnings,
        }
    )
    result = trainer.fit(reporter)
    if not trainer.layout.is_main:
        return result
    if evaluate and len(splits.test_idx):
        # the loggers take the evaluation from the end event below
        result.evaluation = evaluate_run(
            run, splits=splits, device=str(trainer.device), track=False
        ).metrics
    reporter.end(
        {
            "run_dir": str(run.path),
            "epochs_completed": result.epochs_completed,
            "best_epoch": result.best_epoch,
            "best": result.best,
            "stopped_early": result.stopped_early,
            "test": evaluation_summary(result.evaluation),
        }
    )
    return result


def evaluation_summary(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    if not evaluation:
        return None
    if evaluation.get("task") == "axion-mass":
        return {k: evaluation.get(k) for k in ("mae", "rmse", "r2", "mae_mean_predictor", "n")}
    return {k: evaluation.get(k) for k in ("accuracy", "macro_auc", "micro_auc", "auc", "n")}


def _check_same_data(run: RunDir, splits: Splits) -> None:
    recorded = run.classes
    if recorded != list(splits.classes):
        raise DeepLenseError(
            f"cannot resume {run.path}: the data now has classes {splits.classes}, "
            f"the run was trained on {recorded}"
        )
