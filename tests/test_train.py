"""Training: configuration, the loop, run directories, determinism, early stopping, resume."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.runs.config import resolve
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.training.loop import augment, improved, lr_factor

QUICK = ["--epochs", "2", "--batch-size", "16", "--output", "quiet", "--num-threads", "1"]


def _train(sim_root: Path, run_dir: Path, *extra: str, model: str = "resnet18") -> RunDir:
    args = ["train", "-m", model, "--dataset", "Model_III", "--data-root", str(sim_root)]
    result = CliRunner().invoke(cli, [*args, "--run-dir", str(run_dir), *QUICK, *extra])
    assert result.exit_code == 0, result.output
    return RunDir.open(run_dir)


# ---- configuration ------------------------------------------------------------------


def test_config_precedence(tmp_path: Path) -> None:
    base = resolve({}, {"model": {"name": "cct"}})
    assert base["model"]["name"] == "CCT"
    arch_lr = base["train"]["lr"]
    file_cfg = {
        "model": {"name": "cct", "params": {"num_layers": 2}},
        "train": {"lr": 1e-4, "epochs": 7},
    }
    cfg = resolve(
        file_cfg, {"train": {"epochs": 3, "lr": None}}, {"model.num_heads": 2, "train.seed": 5}
    )
    assert cfg["train"]["lr"] == 1e-4  # file beats the architecture default
    assert cfg["train"]["epochs"] == 3  # flag beats file
    assert cfg["train"]["seed"] == 5
    assert cfg["model"]["params"]["num_layers"] == 2 and cfg["model"]["params"]["num_heads"] == 2
    assert arch_lr != 1e-4


@pytest.mark.parametrize(
    "file_cfg, overrides, message",
    [
        ({"train": {"epochs": 2, "bogus": 1}}, {}, "unknown train setting"),
        ({"model": {"name": "cct", "params": {"nope": 1}}}, {}, "unknown CCT model"),
        ({}, {"model.nope": 3}, "unknown CCT model"),
        ({}, {"whatever": 3}, "unknown setting 'whatever'"),
        ({"train": {"epochs": -1}}, {}, "epochs must be a positive"),
        ({"train": {"lr": "fast"}}, {}, "lr must be a positive"),
        ({}, {"train.precise_bn_images": -1}, "precise_bn_images must be a whole number"),
    ],
)
def test_config_errors(file_cfg, overrides, message) -> None:
    file_cfg = {"model": {"name": "cct"}, **file_cfg} if "model" not in file_cfg else file_cfg
    with pytest.raises(DeepLenseError, match=message):
        resolve(file_cfg, {}, overrides)


def test_print_config_and_config_file_round_trip(tmp_path: Path) -> None:
    runner = CliRunner()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": {"name": "swin"}, "train": {"epochs": 4}}))
    result = runner.invoke(
        cli, ["train", "--config", str(cfg_file), "--lr", "0.002", "--print-config"]
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["model"]["name"] == "Swin" and printed["train"]["epochs"] == 4
    assert printed["train"]["lr"] == 0.002
    # the printed config is itself a valid --config
    again = tmp_path / "again.yaml"
    again.write_text(result.output)
    result2 = runner.invoke(cli, ["train", "--config", str(again), "--print-config"])
    assert yaml.safe_load(result2.output) == printed


def test_exponent_floats_read_as_numbers_in_set_and_config_files(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) loads 5e-4 and 1.0e4 as strings; users write them everywhere.
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: {name: cct}\ntrain: {lr: 3e-4, weight_decay: 1.0e-2}\n")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(cfg_file),
            "--set",
            "train.min_lr_ratio=1E-3",
            "--set",
            "train.grad_clip=.5e1",
            "--set",
            "data.split_seed=7",
            "--print-config",
        ],
    )
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["data"]["split_seed"] == 7  # an integer stays an integer
    printed = resolved["train"]
    assert printed["lr"] == 3e-4 and isinstance(printed["lr"], float)
    assert printed["weight_decay"] == 1e-2 and printed["min_lr_ratio"] == 1e-3
    assert printed["grad_clip"] == 5.0
    from deeplense_cli.runs.config import parse_value

    assert parse_value("5e-4") == 5e-4 and parse_value("-2E+3") == -2000.0
    # what is not a float stays what it was
    assert parse_value("7") == 7 and isinstance(parse_value("7"), int)
    assert (
        parse_value("e5") == "e5" and parse_value("5e") == "5e" and parse_value("1e-4x") == "1e-4x"
    )
    assert parse_value("[1e-3, 2]") == [1e-3, 2] and parse_value("true") is True
    # still a safe loader: a Python tag is not constructed, the text comes back as is
    evil = "!!python/object/apply:os.system ['true']"
    assert parse_value(evil) == evil


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "nope", "--dataset", "Model_III"], "unknown model 'nope'"),
        (["--dataset", "Model_III"], "no model given"),
        (["-m", "cct", "--set", "novalue"], "--set expects KEY=VALUE"),
    ],
)
def test_train_bad_input_is_one_line(args, message) -> None:
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_missing_dataset_says_how_to_get_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["train", "-m", "cct", "--dataset", "Model_II", "--data-root", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "deeplense data simulate" in result.output


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(bad)])
    assert result.exit_code == 1 and "not valid YAML" in result.output


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


def test_augment_setting_resolves_and_is_validated(tmp_path: Path) -> None:
    def augment_of(*extra: str) -> Any:
        result = CliRunner().invoke(cli, ["train", "-m", "resnet18", *extra, "--print-config"])
        assert result.exit_code == 0, result.output
        return yaml.safe_load(result.output)["train"]["augment"]

    # auto: the half turn on the DeepLense datasets (fixed lens orientation), all 8 elsewhere
    assert augment_of("--dataset", "Model_III") == "rot180"
    assert augment_of("--data", str(tmp_path)) == "dihedral"
    assert augment_of("--dataset", "Model_III", "--augment", "flips") == "flips"
    assert augment_of("--dataset", "Model_III", "--no-augment") == "none"
    assert augment_of("--data", str(tmp_path), "--set", "train.augment=true") is True
    result = CliRunner().invoke(
        cli, ["train", "-m", "resnet18", "--data", str(tmp_path), "--set", "train.augment=rot45"]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "train.augment must be auto, dihedral, flips, rot180, none" in result.output


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


def test_standardize_off_keeps_plain_minmax_inputs(sim_root: Path, tmp_path: Path) -> None:
    run = _train(sim_root, tmp_path / "run", "--epochs", "1", "--set", "data.standardize=false")
    assert run.transform == {"normalize": "minmax", "image_size": 64, "in_channels": 1}


def test_train_writes_a_complete_run(sim_root: Path, tmp_path: Path) -> None:
    run = _train(sim_root, tmp_path / "run")
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


def test_training_is_repeatable_with_a_seed(sim_root: Path, tmp_path: Path) -> None:
    a = _train(sim_root, tmp_path / "a", "--seed", "3")
    b = _train(sim_root, tmp_path / "b", "--seed", "3", "--no-evaluate")
    la = [r["train_loss"] for r in a.read_metrics()]
    lb = [r["train_loss"] for r in b.read_metrics()]
    assert la == pytest.approx(lb, rel=1e-6)


def test_early_stopping(sim_root: Path, tmp_path: Path) -> None:
    # A vanishing learning rate cannot improve validation loss: stop after `patience` epochs.
    run = _train(
        sim_root,
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


def test_early_stopping_ignores_floating_point_noise() -> None:
    from deeplense_cli.training.loop import progressed

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


def test_min_delta_flag_and_bad_values(tmp_path: Path) -> None:
    args = ["train", "-m", "resnet18", "--data", str(tmp_path), "--print-config"]
    result = CliRunner().invoke(cli, [*args, "--min-delta", "0.01"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["train"]["min_delta"] == 0.01
    result = CliRunner().invoke(cli, [*args, "--min-delta", "-1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "train.min_delta must be a number >= 0" in result.output


def test_ema_and_label_smoothing_run(sim_root: Path, tmp_path: Path) -> None:
    run = _train(
        sim_root,
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


def test_bf16_on_a_cpu_without_native_bf16_warns(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deeplense_cli.core import cpu as machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    base = ["train", "-m", "cct", "--data", str(sim_root / "Model_III"), "--epochs", "1",
            "--max-train-per-class", "4", "--batch-size", "4", "--no-evaluate"]  # fmt: skip
    starts = {}
    for amp in ("bf16", "auto"):
        args = [*base, "--amp", amp, "--run-dir", str(tmp_path / amp), "--output", "jsonl"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        starts[amp] = json.loads(result.stdout.splitlines()[0])
    assert starts["bf16"]["amp"] == "bfloat16"
    assert "bf16 autocast is emulated" in starts["bf16"]["warnings"][0]
    assert starts["auto"]["amp"] == "off" and starts["auto"]["warnings"] == []
    # the rich display prints it under the header
    args = [*base, "--amp", "bf16", "--run-dir", str(tmp_path / "rich")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and "Warning: this CPU has no native bf16" in result.output


def test_rich_output_ends_with_the_evaluation_tables(sim_root: Path, tmp_path: Path) -> None:
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--run-dir", str(tmp_path / "r"), "--epochs", "1", "--batch-size", "16"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "ResNet18 on the test split" in result.output and "accuracy" in result.output
    # the simulated axion test images carry masses: their table follows the metrics table
    assert result.output.index("Axion images by axion mass") > result.output.index("accuracy")


def test_run_dir_must_be_empty(sim_root: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "-m",
            "resnet18",
            "--dataset",
            "Model_III",
            "--data-root",
            str(sim_root),
            "--run-dir",
            str(tmp_path / "full"),
        ],
    )
    assert result.exit_code == 1 and "not empty" in result.output


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


def test_time_budget_plans_epochs_after_the_first(sim_root: Path, tmp_path: Path) -> None:
    run = _train(
        sim_root, tmp_path / "budget", "--epochs", "5", "--max-minutes", "0.0001", "--no-evaluate"
    )
    rows = run.read_metrics()
    assert len(rows) == 1 and rows[0]["planned_epochs"] == 1


def test_resume_restores_a_replanned_learning_rate(sim_root: Path, tmp_path: Path) -> None:
    import io

    import torch

    from deeplense_cli.training.loop import Trainer, load_splits

    args = ["--epochs", "1", "--max-minutes", "30", "--no-evaluate"]
    run = _train(sim_root, tmp_path / "budget", *args, "--set", "train.warmup_epochs=0")
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
    done = trainer.scheduler.last_epoch
    assert done == trainer.steps_per_epoch and trainer.epoch == 1
    trainer.epochs, trainer.total_steps = 6, 6 * done  # the plan the first steps made
    trainer.spent_seconds = 60.0
    trainer.replan(60.0 * 10, done)  # ten times slower: the plan shrinks and re-anchors
    assert trainer.lr_anchor is not None and trainer.lr_anchor[0] == done
    assert done < trainer.total_steps < 6 * trainer.steps_per_epoch
    buffer = io.BytesIO()
    torch.save(trainer.state(), buffer)
    buffer.seek(0)
    resumed = Trainer(config, run, load_splits(config))
    resumed.restore(torch.load(buffer, weights_only=True))
    assert (resumed.total_steps, resumed.lr_anchor) == (trainer.total_steps, trainer.lr_anchor)
    for step in range(done, trainer.total_steps + 1):
        assert resumed.lr_factor(step) == trainer.lr_factor(step)


def test_fused_optimizer_takes_the_default_adamw_steps() -> None:
    import torch

    from deeplense_cli.training.loop import _param_groups, make_optimizer

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


def test_openmp_spin_is_bounded_unless_the_user_chose() -> None:
    from deeplense_cli.core.device import OPENMP_SPIN_COUNT, configure_openmp

    env: dict[str, str] = {}
    assert configure_openmp(env) == f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}"
    assert env == {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
    for mine in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}):
        env = dict(mine)
        assert configure_openmp(env) is None and env == mine


def test_the_cli_sets_openmp_before_torch_is_imported() -> None:
    """libgomp reads its environment once, when torch loads: set later, it does nothing."""
    code = (
        "import os, sys\n"
        "from deeplense_cli import cli\n"
        "seen = {}\n"
        "def spy(**kw):\n"
        "    seen['torch'] = 'torch' in sys.modules\n"
        "    seen['spin'] = os.environ.get('GOMP_SPINCOUNT')\n"
        "    sys.exit(0)\n"
        "cli.cli = spy\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(seen)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == "{'torch': False, 'spin': '3000'}"


def test_cpu_mixed_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from deeplense_cli.core import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: True)
    assert dev.autocast_dtype(cpu, "auto") is torch.bfloat16
    assert dev.autocast_dtype(cpu, "off") is None
    monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: False)
    assert dev.autocast_dtype(cpu, "auto") is None  # emulated bf16 would only be slower
    assert dev.autocast_dtype(cpu, "bf16") is torch.bfloat16  # asked for: honoured
    with pytest.raises(DeepLenseError, match="fp16 needs a CUDA device"):
        dev.autocast_dtype(cpu, "fp16")


def test_bf16_training_on_the_cpu_keeps_float32_checkpoints(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import deeplense_cli.core.device

    changed: list[int] = []
    fixups = deeplense_cli.core.device.cpu_bf16_fixups
    monkeypatch.setattr(
        deeplense_cli.core.device, "cpu_bf16_fixups", lambda m: changed.append(fixups(m)) or 0
    )
    args = ("--amp", "bf16", "--epochs", "1", "--no-evaluate")
    run = _train(sim_root, tmp_path / "bf16", *args, model="cvt")
    assert changed == [4]  # CvT's strided key/value projections train in float32
    _train(sim_root, tmp_path / "fp32", "--amp", "off", "--epochs", "1", "--no-evaluate")
    assert changed == [4]  # not without autocast
    (row,) = run.read_metrics()
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float32}


def test_precise_batch_norm_recomputes_the_running_statistics(
    sim_root: Path, tmp_path: Path
) -> None:
    """Before each validation the BatchNorm statistics are an exact average over training
    images at the current weights, saved with the checkpoint, without touching torch's RNG."""
    import torch

    from deeplense_cli.training.loop import Trainer, load_splits

    args = ["--epochs", "1", "--no-evaluate", "--set", "train.precise_bn_images=48"]
    run = _train(sim_root, tmp_path / "run", *args)
    state = torch.load(run.path / "checkpoints" / "best.pt", weights_only=True)
    tracked = {k: int(v) for k, v in state["model"].items() if k.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {3}  # 48 images in batches of 16
    plain = _train(sim_root, tmp_path / "plain", "--epochs", "1", "--no-evaluate")
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


def _budget_trainer(
    steps_per_epoch: int, epochs: int, minutes: float, warmup: int, val_images: int = 0
) -> Any:
    """A Trainer with only what the budget planner reads (no model, no data), 11 steps
    into its first epoch."""
    from types import SimpleNamespace

    from deeplense_cli.training.loop import Trainer

    t = Trainer.__new__(Trainer)
    t.steps_per_epoch, t.batch_size = steps_per_epoch, 32
    t.max_epochs = t.epochs = epochs
    t.total_steps = steps_per_epoch * epochs
    t.max_minutes, t.spent_seconds, t.budget_planned = minutes, 0.0, False
    t.warmup_steps, t.epoch = warmup, 0
    t.min_ratio, t.lr_anchor = 0.01, None
    t.t = {"eval_batch_size": 96}
    t.splits = SimpleNamespace(val_idx=np.arange(val_images))
    t.scheduler = SimpleNamespace(last_epoch=11)
    return t


def _end_epoch(t: Any, epoch: int, spent: float, epoch_seconds: float) -> None:
    """The planner after whole epoch ``epoch`` (100 steps each) with ``spent`` s used."""
    t.epoch, t.scheduler.last_epoch, t.spent_seconds = epoch, epoch * 100, spent
    t.replan(epoch_seconds, 100)


def test_time_budget_plan_arithmetic() -> None:
    # 100 steps an epoch at 0.1 s, no validation: 60 s hold 600 steps = 6 epochs
    t = _budget_trainer(100, epochs=50, minutes=1.0, warmup=200)
    t.plan_early(0.1)
    assert (t.epochs, t.total_steps, t.warmup_steps) == (6, 600, 60)  # warm-up: a tenth
    # the first epoch took 30 s in all: the rest (30 s) holds 100 more steps
    _end_epoch(t, 1, spent=30.0, epoch_seconds=30.0)
    assert (t.epochs, t.total_steps) == (2, 200)
    # a plan run to its end stays ended, however much time is left
    _end_epoch(t, 2, spent=35.0, epoch_seconds=5.0)
    assert (t.epochs, t.total_steps) == (2, 200)
    # later epochs shorten the plan when the budget cannot hold it
    t2 = _budget_trainer(100, epochs=50, minutes=1.0, warmup=0)
    t2.plan_early(0.1)
    _end_epoch(t2, 2, spent=50.0, epoch_seconds=25.0)  # 10 s left at 0.25 s a step: 40 steps
    assert (t2.epochs, t2.total_steps) == (3, 240)  # the third epoch cut short
    # a last epoch of under a quarter is dropped rather than run at the final learning rate
    t4 = _budget_trainer(100, epochs=50, minutes=1.0, warmup=0)
    t4.plan_early(0.0984)  # 609 steps: 6 epochs and 9 steps
    assert (t4.epochs, t4.total_steps) == (6, 600)
    # a faster first epoch than the probe: the plan grows, up to --epochs
    t3 = _budget_trainer(100, epochs=8, minutes=1.0, warmup=0)
    t3.plan_early(0.2)
    assert (t3.epochs, t3.total_steps) == (3, 300)
    _end_epoch(t3, 1, spent=5.0, epoch_seconds=5.0)
    assert (t3.epochs, t3.total_steps) == (8, 800)

    # less than one epoch: the first is cut short where the budget ends
    short = _budget_trainer(100, epochs=50, minutes=0.125, warmup=200)
    short.plan_early(0.1)
    assert (short.epochs, short.total_steps, short.warmup_steps) == (1, 75, 8)
    tiny = _budget_trainer(100, epochs=50, minutes=0.001, warmup=200)
    tiny.plan_early(0.1)
    assert tiny.total_steps == 12  # one step past those already taken

    # validation counts against the budget: 960 images in 96-image batches at a third of
    # a 32-image step each = 1 s an epoch, i.e. 0.01 s a step on top of 0.1 s
    val = _budget_trainer(100, epochs=50, minutes=1.0, warmup=0, val_images=960)
    val.plan_early(0.1)
    assert val.epochs == 6 and 540 <= val.total_steps <= 546


def test_time_budget_replans_keep_the_learning_rate_continuous() -> None:
    t = _budget_trainer(100, epochs=50, minutes=1.0, warmup=0)
    t.plan_early(0.1)
    assert t.total_steps == 600
    _end_epoch(t, 1, spent=10.0, epoch_seconds=10.0)  # as planned: the plan stands
    assert (t.total_steps, t.lr_anchor) == (600, None)
    factors = [t.lr_factor(s) for s in range(201)]
    # the machine speeds up: 44 s left at 0.06 s a step hold 733 more steps
    _end_epoch(t, 2, spent=16.0, epoch_seconds=6.0)
    assert (t.epochs, t.total_steps) == (10, 933)
    assert t.lr_factor(200) == pytest.approx(factors[200])  # no jump ...
    factors += [t.lr_factor(s) for s in range(201, 301)]
    # ... and slows down: 28 s left at 0.16 s a step hold 175 more
    _end_epoch(t, 3, spent=32.0, epoch_seconds=16.0)
    assert (t.epochs, t.total_steps) == (5, 475)
    assert t.lr_factor(300) == pytest.approx(factors[300])
    factors += [t.lr_factor(s) for s in range(301, 476)]
    assert all(a >= b for a, b in itertools.pairwise(factors))  # decays monotonically ...
    assert factors[-1] == pytest.approx(0.01)  # ... to the floor at the plan's end
    steps = np.diff(factors)
    assert steps.min() > -0.01  # and smoothly: no step drops more than 1% of the peak


def test_time_budget_shorter_than_an_epoch_truncates_it(sim_root: Path, tmp_path: Path) -> None:
    import torch

    # batch 4: ~16 steps an epoch; the plan is made after a few, and stops right there
    args = ["--epochs", "5", "--max-minutes", "1e-6", "--batch-size", "4", "--no-evaluate"]
    run = _train(sim_root, tmp_path / "short", *args)
    (row,) = run.read_metrics()
    state = torch.load(run.path / "checkpoints" / "last.pt", weights_only=True)
    assert row["planned_epochs"] == 1
    assert state["scheduler"]["last_epoch"] == state["planned_steps"] < 10
    config = run.read_config()["train"]
    assert row["lr"] == pytest.approx(config["lr"] * config["min_lr_ratio"], rel=1e-6)


def test_failed_start_leaves_no_run_directory(tmp_path: Path, deeplense_home: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "-m", "cct", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "is not a folder" in result.output
    assert not list((deeplense_home / "runs").glob("*"))
