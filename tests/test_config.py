"""Training configuration: precedence, validation, config files, bad flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from deeplense_cli.cli import cli
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.training.config import parse_value, resolve


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
        ({"train": {"epochs": -1}}, {}, "epochs must be a whole number >= 1"),
        ({"train": {"lr": "fast"}}, {}, r"lr must be a number in \(0, 1\]"),
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
    from deeplense_cli.training.config import parse_value

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
        (["-m", "nope", "--dataset", "Model_III"], "unknown model 'nope'; available"),
        (["-m", "resnt18", "--dataset", "Model_III"], "'resnt18' (did you mean 'ResNet18'?)"),
        (["-m", "cvt", "--dataset", "Modl_III"], "'Modl_III' (did you mean 'Model_III'?)"),
        (["--dataset", "Model_III"], "no model given"),
        (["-m", "cct", "--set", "novalue"], "--set expects KEY=VALUE"),
    ],
)
def test_train_bad_input_is_one_line(args, message) -> None:
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "simulate", "Model_IIII"], "'Model_IIII' (did you mean 'Model_III'?)"),
        (["benchmark", "--models", "cvt", "--datasets", "Model_2"], "(did you mean 'Model_I'?)"),
    ],
)
def test_a_mistyped_name_gets_a_did_you_mean(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and message in result.output, result.output


def test_a_run_refused_on_its_data_names_no_run_directory(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)  # no images
    args = ["train", "-m", "resnet18", "--data", str(tmp_path / "data"), "--run-dir",
            str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Error: " in result.output, result.output
    assert "Run directory:" not in result.output  # was: printed, then the folder removed
    assert not (tmp_path / "run").exists()


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


def test_min_delta_flag_and_bad_values(tmp_path: Path) -> None:
    args = ["train", "-m", "resnet18", "--data", str(tmp_path), "--print-config"]
    result = CliRunner().invoke(cli, [*args, "--min-delta", "0.01"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["train"]["min_delta"] == 0.01
    result = CliRunner().invoke(cli, [*args, "--min-delta", "-1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "train.min_delta must be a number >= 0" in result.output


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


def test_failed_start_leaves_no_run_directory(tmp_path: Path, deeplense_home: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "-m", "cct", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "is not a folder" in result.output
    assert not list((deeplense_home / "runs").glob("*"))


# ---- settings checked before anything is written (issue 23) ------------------------


@pytest.mark.parametrize(
    "train, message",
    [
        ({"lr": float("nan")}, r"train.lr must be a number in \(0, 1\], got nan"),
        ({"lr": float("inf")}, r"train.lr must be a number in \(0, 1\], got inf"),
        ({"lr": 1e30}, r"train.lr must be a number in \(0, 1\]"),
        ({"lr": 0}, r"train.lr must be a number in \(0, 1\]"),
        ({"weight_decay": -0.1}, "train.weight_decay must be a number >= 0"),
        ({"weight_decay": float("inf")}, "train.weight_decay must be a number >= 0"),
        ({"label_smoothing": 1.0}, r"train.label_smoothing must be a number in \[0, 1\)"),
        ({"warmup_epochs": float("nan")}, "train.warmup_epochs must be a number >= 0"),
        ({"grad_clip": -1}, "train.grad_clip must be a number >= 0"),
        ({"min_lr_ratio": 2}, r"train.min_lr_ratio must be a number in \[0, 1\]"),
        ({"ema_decay": float("nan")}, r"train.ema_decay must be a number in \[0, 1\)"),
        ({"min_delta": float("inf")}, "train.min_delta must be a number >= 0"),
        ({"max_minutes": -5}, "train.max_minutes must be a number >= 0"),
        ({"batch_size": 2.5}, "train.batch_size must be a whole number >= 1"),
        ({"batch_size": True}, "train.batch_size must be a whole number >= 1"),
        ({"eval_batch_size": 0}, "train.eval_batch_size must be a whole number >= 1"),
        ({"patience": -1}, "train.patience must be a whole number >= 0"),
        ({"seed": -1}, "train.seed must be a whole number >= 0"),
        ({"num_threads": "many"}, "train.num_threads must be a whole number"),
        ({"device": "banana"}, "train.device must be auto, cpu, cuda or cuda:N"),
        ({"channels_last": "yes"}, "train.channels_last must be auto, true or false"),
        ({"test_curve": "yes"}, "train.test_curve must be true or false, got 'yes'"),
    ],
)
def test_non_finite_and_out_of_range_train_settings_are_refused(train, message) -> None:
    with pytest.raises(DeepLenseError, match=message):
        resolve({"model": {"name": "resnet18"}, "train": train})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"val_fraction": float("nan")}, r"data.val_fraction must be a number in \[0, 1\)"),
        ({"test_fraction": 1.5}, r"data.test_fraction must be a number in \[0, 1\)"),
        ({"split_seed": -3}, "data.split_seed must be a whole number >= 0"),
        ({"max_train_per_class": 0}, "data.max_train_per_class must be a whole number >= 1"),
        ({"standardize": "no"}, "data.standardize must be true or false, got 'no'"),
        ({"skip_bad": "yes"}, "data.skip_bad must be true or false, got 'yes'"),
        ({"dataset": 3}, "data.dataset must be a name or a path"),
    ],
)
def test_bad_data_settings_are_refused(data, message) -> None:
    with pytest.raises(DeepLenseError, match=message):
        resolve({"model": {"name": "resnet18"}, "data": data})


def test_yaml_booleans_and_off_still_resolve() -> None:
    # YAML 1.1 reads a bare no/off as false: those are booleans, not strings
    cfg = resolve({"model": {"name": "resnet18"}, "data": {"standardize": False}},
                  overrides={"train.amp": parse_value("off"), "data.skip_bad": parse_value("yes")})  # fmt: skip
    assert cfg["data"]["standardize"] is False and cfg["data"]["skip_bad"] is True
    assert cfg["train"]["amp"] == "off"


@pytest.mark.parametrize(
    "how",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "1e30"],
        ["--set", "train.lr=.nan"],
        ["--set", "data.val_fraction=.inf"],
        ["--device", "banana"],
        ["config", "data:\n  standardize: 'no'\n"],
        ["config", "train:\n  lr: .inf\n"],
    ],
)
def test_bad_settings_are_refused_before_a_run_folder_exists(
    how: list[str], sim_root: Path, tmp_path: Path
) -> None:
    """Flags, --set and config files: one line, exit 1, and no run folder (these used to end in
    a traceback from torch or sklearn, after the run folder was made)."""
    if how[0] == "config":
        (tmp_path / "c.yaml").write_text(how[1])
        how = ["--config", str(tmp_path / "c.yaml")]
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--epochs", "1", "--batch-size", "16", "--output", "quiet", "--no-evaluate",
            "--run-root", str(tmp_path / "runs"), "--run-dir", str(tmp_path / "run"), *how]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output and result.exception is not None
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_device_this_machine_lacks_is_refused_before_the_run_folder(
    sim_root: Path, tmp_path: Path
) -> None:
    import torch

    device = "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99"
    args = ["train", "-m", "resnet18", "--dataset", "Model_III", "--data-root", str(sim_root),
            "--epochs", "1", "--output", "quiet", "--device", device,
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert ("CUDA is not available" in result.output) or ("CUDA device(s) present" in result.output)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("foo: 1\n", "has no model, data, train section(s), so it is not a deeplense run"),
        ("- 1\n- 2\n", "is not a mapping"),
        (
            "model: {name: resnet18}\ndata: {dataset: Model_III}\ntrain: {}\nfoo: 1\n",
            "unknown section(s) foo",
        ),
        (
            "model: {name: resnet18}\ndata: {dataset: Model_III}\ntrain: {lr: .nan}\n",
            "train.lr must be a number in (0, 1], got nan",
        ),
    ],
)
def test_resume_refuses_a_config_that_is_not_a_deeplense_run(
    config_text: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text(config_text)
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # nothing written
