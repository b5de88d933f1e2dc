"""What a run's settings are: their defaults, the values they may take and what they mean.

The one place these facts are written: :mod:`~deeplense_cli.training.config` resolves and
checks a configuration with them, and the command line builds its flags, choices and help
from them. The standard library only (and ``runs.task`` and the ``evaluation`` package's
constants, as light), so that ``deeplense --help`` reads them without loading the engine.
"""

from __future__ import annotations

from typing import Any

from deeplense_cli.evaluation import EVAL_BATCH_SIZE
from deeplense_cli.runs.task import CLASSIFY

DATA_DEFAULTS: dict[str, Any] = {
    "dataset": None,  # Model_I / Model_II / Model_III under the data root
    "data": None,  # any class-per-folder tree
    "data_root": None,
    "val_fraction": 0.1,
    "test_fraction": 0.1,  # held-out share when there is no test folder
    "split_seed": 0,
    "max_train_per_class": None,
    "max_test_per_class": None,
    "skip_bad": False,
    # standardise inputs with the training pixels' mean and std (after min-max per image)
    "standardize": True,
    # centre crop in pixels before everything else (None: the whole image); the lens sits at
    # the centre and the outer pixels are mostly sky
    "crop": None,
}

# The settings with a flag are described in TRAIN_HELP below; the comments here describe
# the others.
TRAIN_DEFAULTS: dict[str, Any] = {
    "task": CLASSIFY,
    # axion-mass: the loss on the standardised target, and the target's scaling
    "regression_loss": "huber",
    "target_scaling": "standardize",
    "epochs": 10,
    "max_minutes": None,
    "batch_size": 64,
    "lr": 5e-4,
    "min_lr_ratio": 0.01,  # cosine decays to lr * min_lr_ratio
    "weight_decay": 0.05,
    "warmup_epochs": 1.0,
    "grad_clip": 1.0,
    "label_smoothing": 0.0,
    "ema_decay": 0.0,
    "augment": "auto",
    # the share of training images seen as a user's 8-bit files would hold them (half PNG,
    # half JPEG at quality 60-95): a model that handles those instead of flagging them
    "degrade": 0.0,
    "early_stopping_metric": "val_macro_auc",
    "patience": 0,
    # above 0: a frozen model's validation loss still moves by ~1e-7 with floating-point noise
    "min_delta": 1e-4,
    "seed": 0,
    "device": "auto",
    "amp": "auto",
    "channels_last": "auto",
    "num_threads": None,
    "eval_batch_size": EVAL_BATCH_SIZE,
    # BatchNorm models: recompute the running statistics from this many training images
    # before each validation ("precise BN"); 0 keeps the momentum averages
    "precise_bn_images": 1024,
    # also score the test split after every epoch (test_* columns of metrics.jsonl: test
    # accuracy against training minutes); never used to choose or stop, outside max_minutes
    "test_curve": False,
    "init": None,
    "freeze": "none",
    "sync_bn": False,
}

SLURM_DEFAULTS: dict[str, Any] = {
    "partition": None,
    "gpus": 0,
    "cpus": 2,
    "mem": None,
    "time": "04:00:00",
    "account": None,
    "qos": None,
    "nodes": 1,
    # a training job's processes per node (DDP ranks); None: one per GPU asked for, else one
    "tasks_per_node": None,
}

TRACKING_DEFAULTS: dict[str, Any] = {
    "loggers": [],  # experiment trackers: tensorboard, mlflow, or a plugin's (off by default)
    # the group of tracker runs (MLflow experiment, W&B project); null: "deeplense", or for
    # a tune trial the search's name
    "experiment": None,
}

SECTIONS = ("model", "data", "train", "slurm", "tracking")

# The validation metrics a run can select its best epoch by, and which way is better.
METRICS: dict[str, str] = {
    "val_macro_auc": "max",
    "val_loss": "min",
    "val_accuracy": "max",
    "val_mae": "min",  # --task axion-mass: mean absolute error of log10(m / eV)
}
# The metrics each task's runs record (a classifier has no MAE, a regressor no AUC); the
# first is the task's default.
TASK_METRICS = {
    "classify": ("val_macro_auc", "val_loss", "val_accuracy"),
    "axion-mass": ("val_mae", "val_loss"),
}

# Augmentation groups (train.augment): transform t rotates by 90 x (t % 4) degrees, after a
# left-right flip when t >= 4. "dihedral" is all 8 symmetries of the square; "flips" the
# identity, both flips and the half turn; "rot180" the identity and the half turn.
AUGMENT_GROUPS: dict[str, tuple[int, ...]] = {
    "dihedral": tuple(range(8)),
    "flips": (0, 2, 4, 6),
    "rot180": (0, 2),
    "none": (0,),
}
AUGMENTS = ("auto", *AUGMENT_GROUPS)  # what train.augment may be (also true and false)
AMP_MODES = ("auto", "bf16", "fp16", "off")
# "backbone" trains the classifier head alone (tiny data).
FREEZE = ("none", "backbone")

# Fine-tuning (train.init) starts from a trained model: a tenth of the usual learning rate,
# a short warm-up, no weight EMA (a few hundred steps would average in the start). Flags and
# --config override them.
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "warmup_epochs": 0.5, "ema_decay": 0.0}

# What `train --resume` may change: where the run continues, and how far.
RESUME_CHANGES = ("epochs", "device", "num_threads")


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in values.items())


# What the settings that `deeplense train` has a flag for mean (the flag's help, without its
# default: that comes from TRAIN_DEFAULTS).
TRAIN_HELP: dict[str, str] = {
    "task": "classify the substructure, or regress log10 of the axion mass (eV) on the images "
    "that carry one (axion-mass; the default with --init from an axion-mass model).",
    "epochs": "Epochs to train (--max-minutes may plan fewer).",
    "max_minutes": "Time budget: plan at most as many epochs as fit (after epoch 1).",
    "batch_size": "Global batch: with several processes each takes its share (the learning "
    "rate is not rescaled). Default: per architecture.",
    "lr": "Peak learning rate. Default: per architecture.",
    "ema_decay": "Weight EMA decay, e.g. 0.999 (0 = off).",
    "grad_clip": "Max gradient norm (0 = off).",
    "patience": "Early stopping after N epochs without improvement (0 = off).",
    "early_stopping_metric": "The validation metric that picks the best epoch and that early "
    "stopping watches (val_mae is the default of --task axion-mass).",
    "min_delta": "Early stopping: an epoch counts as progress only when it beats the best by "
    "more than this.",
    "seed": "Seed for initialisation, data order and augmentation.",
    "device": "auto, cpu, cuda or cuda:N.",
    "amp": "Mixed precision. auto: bf16 (or fp16) on CUDA, bf16 on CPUs with bf16 "
    "instructions; off: float32.",
    "num_threads": "CPU threads (default: the cores this process may use).",
    "augment": "Training symmetries. auto: rot180 on --dataset Model_I/II/III (their main lens "
    "has a fixed orientation), dihedral (flips and 90-degree rotations) on other data.",
    "init": "Fine-tune: start from a shipped model's name (Model_I), a run directory or "
    "RUN/checkpoints/{best,last}.pt. Its architecture and transform come with it; the head "
    "is rebuilt when the data's classes differ; "
    f"{_settings(FINETUNE_DEFAULTS)} unless given.",
    "freeze": "With --init: 'backbone' trains only the classifier head (tiny data).",
    "sync_bn": "With several GPU processes: synchronise BatchNorm statistics across them.",
}

DATA_HELP: dict[str, str] = {
    "dataset": "Model_I, Model_II or Model_III under the data root.",
    "data": "Any class-per-folder tree.",
    "split_seed": "Seed of the train/validation split.",
    "val_fraction": "Share of the training folder for validation.",
    "max_train_per_class": "Use at most N training images per class.",
    "max_test_per_class": "Use at most N test images per class.",
    "skip_bad": "Skip unreadable or invalid files.",
}
