"""Training: configuration, the loop, run directories, determinism, early stopping, resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import interruptible

from deeplense_cli.cli import cli
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training.augment import augment
from deeplense_cli.training.schedule import lr_factor
from deeplense_cli.training.stopping import improved

# ---- pieces of the loop -------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine() -> None:
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, 0.01) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))  # decays monotonically
    assert f[-1] == pytest.approx(0.01, abs=0.01)


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (
            "dihedral",
            {"id", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti"},
        ),
        ("flips", {"id", "rot180", "flip_lr", "flip_ud"}),
        ("rot180", {"id", "rot180"}),
        ("none", {"id"}),
    ],
)
def test_augment_applies_the_group_of_square_symmetries(group: str, expected: set[str]) -> None:
    import torch

    # an image with no symmetry of its own, so every transform gives a different image
    a = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4) ** 2
    variants = {
        "id": a,
        "rot90": torch.rot90(a, 1, (-2, -1)),
        "rot180": torch.rot90(a, 2, (-2, -1)),
        "rot270": torch.rot90(a, 3, (-2, -1)),
        "flip_lr": a.flip(-1),
        "flip_ud": a.flip(-2),
        "transpose": a.transpose(-2, -1),
        "anti": torch.rot90(a, 2, (-2, -1)).transpose(-2, -1),
    }
    out = augment(a.repeat(128, 1, 1, 1), np.random.default_rng(0), group)
    seen = set()
    for b in out:
        matches = [name for name, v in variants.items() if torch.equal(v, b)]
        assert len(matches) == 1, "augmented image is not a flip/rotation of the input"
        seen.add(matches[0])
    assert seen == expected


def test_improved_uses_metric_direction_and_loss_tiebreak() -> None:
    assert improved({"val_macro_auc": 0.9, "val_loss": 1}, None, "val_macro_auc")
    assert improved({"val_macro_auc": 0.95}, {"val_macro_auc": 0.9}, "val_macro_auc")
    assert not improved({"val_loss": 0.5}, {"val_loss": 0.4}, "val_loss")
    assert improved(
        {"val_macro_auc": 1.0, "val_loss": 0.1},
        {"val_macro_auc": 1.0, "val_loss": 0.2},
        "val_macro_auc",
    )


# ---- real training runs on simulated data ------------------------------------------


def test_standardize_off_keeps_plain_minmax_inputs(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    run = quick_train(tmp_path / "run", "--epochs", "1", "--set", "data.standardize=false")
    assert run.transform == {"normalize": "minmax", "image_size": 64, "in_channels": 1}


def test_train_writes_a_complete_run(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    run = quick_train(tmp_path / "run")
    for name in ("config.yaml", "classes.json", "transform.json", "split.json", "metrics.jsonl"):
        assert (run.path / name).is_file(), name
    assert run.classes == ["axion", "cdm", "no_sub"]
    transform = run.transform
    assert {k: transform[k] for k in ("normalize", "image_size", "in_channels")} == {
        "normalize": "minmax",
        "image_size": 64,
        "in_channels": 1,
    }
    # standardised with the training images' statistics (after min-max), not val/test's
    from deeplense_cli.data import make_splits, resolve_source
    from deeplense_cli.data.transforms import normalize

    splits = make_splits(
        resolve_source(dataset="Model_III", data=None, data_root=str(sim_root)),
        val_fraction=0.1,
        test_fraction=0.1,
        seed=0,
    )
    pixels = normalize(np.asarray(splits.train.images[np.sort(splits.train_idx)]))
    assert transform["mean"] == pytest.approx(float(pixels.mean()), rel=1e-4)
    assert transform["std"] == pytest.approx(float(pixels.std()), rel=1e-4)
    cfg = run.read_config()
    assert cfg["model"]["name"] == "ResNet18" and cfg["train"]["epochs"] == 2
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["train_loss"]) and 0 <= r["val_accuracy"] <= 1
        assert r["train_images_per_s"] > 0
    assert run.checkpoint_path("best").is_file() and run.checkpoint_path("last").is_file()
    assert not list(run.checkpoint_dir.glob(".*tmp"))  # no temporary leftovers
    # last.pt can resume; best.pt holds the weights only: no optimizer moments (2x the weights)
    last, best = run.load_checkpoint("last"), run.load_checkpoint("best")
    assert {"optimizer", "scheduler", "torch_rng", "train_model"} <= set(last)
    assert all(g["fused"] for g in last["optimizer"]["param_groups"])  # the fused AdamW
    assert not {"optimizer", "scheduler", "torch_rng", "train_model", "ema"} & set(best)
    assert best["epoch"] == next(r["epoch"] for r in reversed(rows) if r["best"])
    assert set(best["model"]) == set(last["model"])
    weights = sum(v.numel() * v.element_size() for v in best["model"].values())
    assert run.checkpoint_path("best").stat().st_size < 1.2 * weights
    assert run.checkpoint_path("last").stat().st_size > 2.5 * weights
    ev = json.loads((run.evaluation_dir / "metrics.json").read_text())
    assert ev["split"] == "test" and ev["n"] == 24
    assert set(ev["auc"]) == {"axion", "cdm", "no_sub"}
    assert sum(map(sum, ev["confusion_matrix"])) == 24
    for png in ("roc.png", "confusion_matrix.png"):
        assert (run.evaluation_dir / png).read_bytes()[:4] == b"\x89PNG"
    # the saved config is a valid --config for a new run
    result = CliRunner().invoke(cli, ["train", "--config", str(run.config_path), "--print-config"])
    assert result.exit_code == 0, result.output


def test_training_is_repeatable_with_a_seed(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    a = quick_train(tmp_path / "a", "--seed", "3")
    b = quick_train(tmp_path / "b", "--seed", "3", "--no-evaluate")
    la = [r["train_loss"] for r in a.read_metrics()]
    lb = [r["train_loss"] for r in b.read_metrics()]
    assert la == pytest.approx(lb, rel=1e-6)


def test_early_stopping(sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]) -> None:
    # A vanishing learning rate cannot improve validation loss: stop after `patience` epochs.
    run = quick_train(
        tmp_path / "es",
        "--epochs",
        "6",
        "--lr",
        "1e-12",
        "--patience",
        "1",
        "--early-stopping-metric",
        "val_loss",
        "--ema-decay",
        "0",
        "--no-evaluate",
    )
    assert len(run.read_metrics()) == 2


def test_without_validation_the_last_epoch_is_the_result_and_patience_is_refused(
    sim_root: Path, tmp_path: Path
) -> None:
    # was: best.pt stayed the first epoch's model, and --patience 2 "stopped early" at epoch 2
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--epochs", "3", "--batch-size", "16", "--num-threads", "1", "--val-fraction", "0",
            "--no-evaluate"]  # fmt: skip
    refused = CliRunner().invoke(cli, [*args, "--patience", "2", "--run-dir", str(tmp_path / "p")])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert "train.patience needs a validation split" in refused.output
    assert not (tmp_path / "p").exists()
    result = CliRunner().invoke(cli, [*args, "--output", "jsonl", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    start = json.loads(result.stdout.splitlines()[0])
    assert any("best.pt is the last epoch's model" in w for w in start["warnings"])
    run = RunDir.open(tmp_path / "r")
    assert [r["best"] for r in run.read_metrics()] == [True, True, True]
    assert run.load_checkpoint("best")["epoch"] == 3
    assert not improved({"val_loss": float("nan")}, {"val_loss": 0.5}, "val_loss")


def test_early_stopping_ignores_floating_point_noise() -> None:
    from deeplense_cli.training.stopping import progressed

    # what a frozen ResNet-18's validation loss did on a float32 CPU: 1.1643640 -> 1.1643639
    assert not progressed(1.1643638530505835, 1.164363969966076, "val_loss", 1e-4)
    assert progressed(1.16, 1.164363969966076, "val_loss", 1e-4)
    assert not progressed(1.17, 1.16, "val_loss", 1e-4)  # worse
    assert progressed(0.9, 0.8, "val_macro_auc", 1e-4) and not progressed(
        0.8, 0.9, "val_macro_auc", 0
    )
    assert not progressed(0.80005, 0.8, "val_macro_auc", 1e-4)
    assert progressed(1.1643638530505835, 1.164363969966076, "val_loss", 0.0)  # min_delta 0
    assert progressed(0.5, None, "val_accuracy", 1e-4)  # the first epoch
    assert not progressed(float("nan"), None, "val_loss", 1e-4)
    assert not progressed(None, 0.5, "val_loss", 1e-4)


def test_ema_and_label_smoothing_run(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    run = quick_train(
        tmp_path / "ema",
        "--ema-decay",
        "0.9",
        "--label-smoothing",
        "0.1",
        "--no-evaluate",
    )
    state = run.load_checkpoint("last")
    assert state["ema"] is not None
    # the evaluated weights (EMA) differ from the raw training weights
    key = next(k for k in state["model"] if k.endswith("weight"))
    assert not np.allclose(state["model"][key].numpy(), state["train_model"][key].numpy())


def test_jsonl_output_is_machine_readable(sim_root: Path, tmp_path: Path) -> None:
    args = [
        "train",
        "-m",
        "resnet18",
        "--data",
        str(sim_root / "Model_III"),
        "--run-dir",
        str(tmp_path / "j"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--output",
        "jsonl",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "epoch" in kinds and "end" in kinds and kinds[-1] == "evaluation"


def test_rich_output_ends_with_the_evaluation_tables(sim_root: Path, tmp_path: Path) -> None:
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(tmp_path / "r"), "--epochs", "1", "--batch-size", "16"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "ResNet18 on the test split" in result.output and "accuracy" in result.output
    # the simulated axion test images carry masses: their table follows the metrics table
    assert result.output.index("Axion images by axion mass") > result.output.index("accuracy")


@pytest.mark.slow
def test_resume_after_sigkill_keeps_completed_epochs(sim_root: Path, tmp_path: Path) -> None:
    """Kill a real training process mid-epoch; the resumed run finishes with the completed
    epochs intact and matches an uninterrupted run."""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "DEEPLENSE_JSONL_BATCH_EVERY": "0", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "deeplense_cli", "train"]
    args = [
        "-m",
        "resnet18",
        "--dataset",
        "Model_III",
        "--data-root",
        str(sim_root),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--seed",
        "7",
        "--num-threads",
        "1",
        "--output",
        "jsonl",
        "--no-evaluate",
    ]
    proc = subprocess.Popen(
        [*base, *args, "--run-dir", str(run_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    killed_in = None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "batch" and event["epoch"] == 3 and event["step"] >= 2:
            proc.send_signal(signal.SIGKILL)
            killed_in = event["epoch"]
            break
    proc.wait(timeout=60)
    assert killed_in == 3 and proc.returncode == -signal.SIGKILL
    before = RunDir.open(run_dir).read_metrics()
    assert [r["epoch"] for r in before] == [1, 2]

    resumed = subprocess.run(
        [*base, "--resume", str(run_dir), "--output", "jsonl"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = RunDir.open(run_dir).read_metrics()
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    assert after[:2] == before  # completed epochs untouched

    straight = subprocess.run(
        [*base, *args, "--run-dir", str(tmp_path / "straight")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = RunDir.open(tmp_path / "straight").read_metrics()
    for got, want in zip(after, reference, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)


def test_time_budget_plans_epochs_after_the_first(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    run = quick_train(
        tmp_path / "budget", "--epochs", "5", "--max-minutes", "0.0001", "--no-evaluate"
    )
    rows = run.read_metrics()
    assert len(rows) == 1 and rows[0]["planned_epochs"] == 1


def test_resume_restores_a_replanned_learning_rate(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    import io

    import torch

    from deeplense_cli.data.splits import load_splits
    from deeplense_cli.training.loop import Trainer

    args = ["--epochs", "1", "--max-minutes", "30", "--no-evaluate"]
    run = quick_train(tmp_path / "budget", *args, "--set", "train.warmup_epochs=0")
    config = run.read_config()
    config["train"]["epochs"] = 6  # as --resume RUN --epochs 6
    trainer = Trainer(config, run, load_splits(config))
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    trainer.restore(state)
    # early stopping's reference survives a resume; checkpoints from before it existed fall
    # back to the best epoch's value
    assert trainer.progress_ref == pytest.approx(run.read_metrics()[0][trainer.metric])
    del state["progress_ref"]
    legacy = Trainer(config, run, load_splits(config))
    legacy.restore(state)
    assert legacy.progress_ref == pytest.approx(state["best"][trainer.metric])
    done, plan = trainer.scheduler.last_epoch, trainer.plan
    assert done == trainer.steps_per_epoch and trainer.epoch == 1
    plan.epochs, plan.total_steps = 6, 6 * done  # the plan the first steps made
    plan.spent_seconds = 60.0
    plan.replan(60.0 * 10, done, done, epoch=1)  # ten times slower: it shrinks and re-anchors
    assert plan.lr_anchor is not None and plan.lr_anchor[0] == done
    assert done < plan.total_steps < 6 * trainer.steps_per_epoch
    buffer = io.BytesIO()
    torch.save(trainer.state(), buffer)
    buffer.seek(0)
    resumed = Trainer(config, run, load_splits(config))
    resumed.restore(torch.load(buffer, weights_only=True))
    assert (resumed.plan.total_steps, resumed.plan.lr_anchor) == (plan.total_steps, plan.lr_anchor)
    for step in range(done, plan.total_steps + 1):
        assert resumed.plan.lr_factor(step) == plan.lr_factor(step)
    # the optimiser's rate follows the restored plan
    assert resumed.scheduler.lr_lambdas[0](done) == plan.lr_factor(done)


def test_fused_optimizer_takes_the_default_adamw_steps() -> None:
    import torch

    from deeplense_cli.training.optim import _param_groups, make_optimizer

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    fused = make_optimizer(a, 0.05, 1e-2, torch.device("cpu"))
    plain = torch.optim.AdamW(_param_groups(b, 0.05), lr=1e-2)
    assert [g["fused"] for g in fused.param_groups] == [True, True]
    assert [g["weight_decay"] for g in fused.param_groups] == [0.05, 0.0]
    start = a[0].weight.detach().clone()
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert (a[0].weight - start).abs().max() > 1e-2  # five real steps were taken
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_precise_batch_norm_recomputes_the_running_statistics(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    """Before each validation the BatchNorm statistics are an exact average over training
    images at the current weights, saved with the checkpoint, without touching torch's RNG."""
    import torch

    from deeplense_cli.data.splits import load_splits
    from deeplense_cli.training.loop import Trainer

    args = ["--epochs", "1", "--no-evaluate", "--set", "train.precise_bn_images=48"]
    run = quick_train(tmp_path / "run", *args)
    state = torch.load(run.path / "checkpoints" / "best.pt", weights_only=True)
    tracked = {k: int(v) for k, v in state["model"].items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {3}  # 48 images in batches of 16
    plain = quick_train(tmp_path / "plain", "--epochs", "1", "--no-evaluate")
    state = torch.load(plain.path / "checkpoints" / "best.pt", weights_only=True)
    steps = -(-plain.read_record("split")["sizes"]["train"] // 16)  # one epoch, batch 16
    assert steps > 3 and {int(v) for k, v in state["model"].items() if "tracked" in k} == {steps}

    config = run.read_config()
    trainer = Trainer(config, run, load_splits(config))
    first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].float()))
    rng = torch.get_rng_state()
    trainer.precise_batch_norm()
    hook.remove()
    assert torch.equal(torch.get_rng_state(), rng) and not trainer.model.training
    assert first.momentum == 0.1 and len(seen) == 3
    mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen]).mean(0)
    assert torch.allclose(first.running_mean, mean, atol=1e-4)
    assert torch.allclose(first.running_var, var, rtol=1e-3, atol=1e-4)


def test_validation_scores_the_model_that_evaluate_serves(
    tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    """A bf16-trained run validates in float32, with float32 BatchNorm statistics: the epoch's
    figures are what `evaluate --split val` finds in its best checkpoint. (Under autocast a
    full-size CvT validated at 98.59% but evaluated at 97.03%.)"""
    run = quick_train(
        tmp_path / "run",
        "--amp",
        "bf16",
        "--ema-decay",
        "0.9",
        "--no-evaluate",
        "--set",
        "train.precise_bn_images=32",
        model="cvt",
    )
    best = [r for r in run.read_metrics() if r["best"]][-1]
    result = CliRunner().invoke(cli, ["evaluate", str(run.path), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    assert evaluated["checkpoint_epoch"] == best["epoch"]
    assert evaluated["accuracy"] == best["val_accuracy"]
    assert abs(evaluated["loss"] - best["val_loss"]) < 1e-5 * max(1.0, best["val_loss"])


def test_test_curve_records_the_test_split_and_changes_nothing_else(
    tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    """`train.test_curve` adds each epoch's test figures (those `evaluate` finds in that
    epoch's checkpoint) and leaves training, validation and the choice of epoch as they were."""
    plain = quick_train(tmp_path / "plain", "--seed", "5", "--no-evaluate")
    curve = quick_train(
        tmp_path / "curve", "--seed", "5", "--no-evaluate", "--set", "train.test_curve=true"
    )
    rows, plain_rows = curve.read_metrics(), plain.read_metrics()
    assert [r["train_loss"] for r in rows] == pytest.approx(
        [r["train_loss"] for r in plain_rows], rel=1e-6
    )
    assert [r["best"] for r in rows] == [r["best"] for r in plain_rows]
    assert all("test_accuracy" not in r for r in plain_rows)
    assert all(
        {"test_accuracy", "test_macro_auc", "test_loss", "test_seconds"} <= set(r) for r in rows
    )
    result = CliRunner().invoke(
        cli, ["evaluate", str(curve.path), "--checkpoint", "last", "--json"]
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    assert evaluated["accuracy"] == rows[-1]["test_accuracy"]
    assert abs(evaluated["loss"] - rows[-1]["test_loss"]) < 1e-5 * max(1.0, rows[-1]["test_loss"])


def test_time_budget_shorter_than_an_epoch_truncates_it(
    sim_root: Path, tmp_path: Path, quick_train: Callable[..., RunDir]
) -> None:
    import torch

    # batch 4: ~16 steps an epoch; the plan is made after a few, and stops right there
    args = ["--epochs", "5", "--max-minutes", "1e-6", "--batch-size", "4", "--no-evaluate"]
    run = quick_train(tmp_path / "short", *args)
    (row,) = run.read_metrics()
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert row["planned_epochs"] == 1
    assert state["scheduler"]["last_epoch"] == state["planned_steps"] < 10
    config = run.read_config()["train"]
    assert row["lr"] == pytest.approx(config["lr"] * config["min_lr_ratio"], rel=1e-6)


# ---- faults a user meets (issue 23): divergence, skipped files, resume flags, signals ---

# A tiny network for fast CLI runs; BLOWUP's outputs turn infinite outside training mode, as
# a diverged model's do, while its training losses stay finite.
TINY_PLUGIN = """
    from deeplense_cli import Architecture, hookimpl

    def build(*, image_size, num_classes, in_channels, blowup=False):
        import torch.nn as nn

        class Net(nn.Sequential):
            def forward(self, x):
                out = super().forward(x)
                return out * float("inf") if blowup and not self.training else out

        return Net(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(4, num_classes))

    @hookimpl
    def register_architectures(register):
        register(Architecture(name="Tiny", factory=build, defaults={"blowup": False},
                              description="tiny test net", image_sizes=(64,)))
"""


def _tiny_train(data: Path, run_dir: Path, *extra: str) -> Any:
    args = ["train", "-m", "tiny", "--data", str(data), "--run-dir", str(run_dir),
            "--epochs", "1", "--batch-size", "16", "--num-threads", "1", "--no-evaluate"]  # fmt: skip
    return CliRunner().invoke(cli, [*args, *extra])


def test_validation_refuses_non_finite_outputs(trained_run: Path) -> None:
    """A diverged model's NaN outputs never reach the metrics (sklearn's AUC raised a
    ValueError with a traceback on them)."""
    import torch

    from deeplense_cli.core.errors import DeepLenseError
    from deeplense_cli.data.splits import load_splits
    from deeplense_cli.training.loop import Trainer

    run = RunDir.open(trained_run)
    config = run.read_config()
    trainer = Trainer(config, run, load_splits(config))
    assert np.isfinite(trainer.validate()["val_loss"])
    with torch.no_grad():
        next(trainer.eval_model().parameters()).fill_(float("nan"))
    with pytest.raises(DeepLenseError, match="training diverged"):
        trainer.validate()


def test_a_diverged_run_stops_in_one_line_and_leaves_no_folder(
    fake_plugin: Callable[..., None], sim_root: Path, tmp_path: Path
) -> None:
    fake_plugin("tiny", TINY_PLUGIN)
    run_dir = tmp_path / "diverged"
    result = _tiny_train(sim_root / "Model_III", run_dir, "--set", "model.blowup=true")
    assert result.exit_code == 1, result.output
    assert "Error: training diverged" in result.output and "Traceback" not in result.output
    assert not run_dir.exists()  # no checkpoint: resuming would only start it again


@pytest.mark.parametrize("output", ["jsonl", "rich", "quiet"])
def test_skip_bad_says_how_many_and_quiet_names_the_run_once(
    output: str, fake_plugin: Callable[..., None], sim_root: Path, tmp_path: Path
) -> None:
    import shutil

    fake_plugin("tiny", TINY_PLUGIN)
    data = tmp_path / "data"
    shutil.copytree(sim_root / "Model_III", data)
    (data / "cdm" / "broken.npy").write_bytes(b"not an array")
    result = _tiny_train(data, tmp_path / "run", "--skip-bad", "--output", output)
    assert result.exit_code == 0, result.output
    if output == "jsonl":
        start = json.loads(result.stdout.splitlines()[0])
        assert start["event"] == "start" and start["skipped_files"] == 1
        assert any("skipped 1 bad file(s)" in w and "broken.npy" in w for w in start["warnings"])
    elif output == "rich":
        assert "skipped 1 bad file(s)" in result.stderr and "broken.npy" in result.stderr
    else:
        assert result.output.count("Run directory:") == 1


def test_resume_refuses_settings_it_cannot_apply_and_says_what_it_applies(
    trained_run: Path, tmp_path: Path
) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    saved = (run_dir / "config.yaml").read_bytes()
    args = ["train", "--resume", str(run_dir), "--no-evaluate", "--output", "quiet"]
    refused = CliRunner().invoke(cli, [*args, "--lr", "0.5", "--batch-size", "8", "-m", "resnet18"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.output.startswith("Error: --lr, --batch-size, --model cannot change when resum")
    assert refused.output.count("\n") == 1
    refused = CliRunner().invoke(cli, [*args, "--set", "train.seed=3"])
    assert refused.exit_code == 1 and "--set cannot change" in refused.output
    assert (run_dir / "config.yaml").read_bytes() == saved  # nothing written
    # the ones that can change are applied, said, and kept in config.yaml
    applied = CliRunner().invoke(cli, [*args, "--epochs", "1", "--device", "cpu"])
    assert applied.exit_code == 0, applied.output
    assert "with --epochs 1, --device cpu" in " ".join(applied.output.split())  # rich wraps
    assert RunDir.open(run_dir).read_config()["train"]["device"] == "cpu"
    assert [r["epoch"] for r in RunDir.open(run_dir).read_metrics()] == [1]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_jsonl_stream_reports_an_interrupted_run(
    signum: int, sim_root: Path, tmp_path: Path
) -> None:
    """Ctrl+C or SIGTERM: the JSON-lines stream ends with an `interrupted` event, exit 130."""
    env = {**os.environ, "DEEPLENSE_JSONL_BATCH_EVERY": "0", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "deeplense_cli", "train", "-m", "resnet18", "--dataset",
            "Model_III", "--data-root", str(sim_root), "--epochs", "50", "--batch-size", "16",
            "--num-threads", "1", "--output", "jsonl", "--no-evaluate",
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=interruptible,
    )
    assert proc.stdout is not None and proc.stderr is not None
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "epoch":
            proc.send_signal(signum)
            break
    rest, err = proc.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 130, err[-2000:]
    assert events[-1]["event"] == "interrupted" and events[-1]["run_dir"] == str(tmp_path / "run")
    assert events[-1]["epochs_completed"] >= 1
    assert "Interrupted." in err and "Traceback" not in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # it can be resumed
