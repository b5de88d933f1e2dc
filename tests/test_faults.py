"""The fault suite: every command that writes, against a full disk, a destination on another
filesystem, a read-only (or unwritable) destination and SIGKILL in the middle of the write.

Each case checks the exit status, the one-line message, that no traceback was printed and
that the destination holds the complete old file, the complete new one, or nothing (no
temporary file left behind). The disks are real: a small tmpfs is a full disk and a second
filesystem, a read-only tmpfs a read-only one, ``chattr +i`` a folder even root cannot write.
They need root and ``mount``, and skip with the reason elsewhere (CI runs them as root).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from deeplense_cli.cli import cli

TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?\.tmp$")  # core.atomic's temporaries
MODEL = ["-m", "resnet18", "--dataset", "Model_III", "--batch-size", "16", "--num-threads", "1"]


# ---- real filesystems ---------------------------------------------------------------------
@functools.cache
def mount_problem() -> str | None:
    """Why this machine cannot mount a tmpfs (None when it can)."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs (CI runs the fault suite as root)"
    if not shutil.which("mount"):
        return "no mount command"
    probe = Path(f"/tmp/deeplense-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        run = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            return f"cannot mount a tmpfs here: {run.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=True)
    finally:
        probe.rmdir()
    return None


class Disks:
    """Mounts small tmpfs filesystems under the test's folder; unmounts them afterwards."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []

    def tmpfs(self, name: str, size: str = "16m") -> Path:
        problem = mount_problem()
        if problem:
            pytest.skip(problem)
        path = self.base / name
        path.mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
        self.mounted.append(path)
        return path

    @staticmethod
    def read_only(path: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    @staticmethod
    def resize(path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    @staticmethod
    def fill(path: Path) -> None:
        """Take every free byte of the filesystem at ``path``."""
        fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block = b"\0" * 65536
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    if len(block) == 1:
                        break
                    block = block[: len(block) // 2]
        finally:
            os.close(fd)

    @staticmethod
    def immutable(path: Path) -> None:
        """``chattr +i``: nothing can be created in ``path``, not even by root."""
        if not shutil.which("chattr"):
            pytest.skip("no chattr command")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("this filesystem does not support chattr +i")

    def close(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
            # lazy: a killed command's children may still hold a file open there
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    d = Disks(tmp_path / "mnt")
    yield d
    d.close()


# ---- checks -------------------------------------------------------------------------------
def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result, *parts: str) -> str:
    """Exit status 1, no traceback, exactly one 'Error:' line, which contains ``parts``."""
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), (result.exception, out)
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP.match(p.name)] if folder.exists() else []


def full_message(mount: Path, path: Path) -> tuple[str, str]:
    return f"no space left on tmpfs ({mount})", f"while writing {path}"


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "deeplense_cli", *map(str, args)]


def kill_when(args: list[str], point: Callable[[], bool], timeout: float = 300) -> None:
    """Run ``args`` and SIGKILL it, with its worker processes, as soon as ``point()`` holds
    (polled every 2 ms). The point is checked again with the processes stopped, so the kill
    lands in that state: a file can be renamed between a look and a kill on a loaded machine."""
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if point():
                stop_group(proc.pid)
                if point():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return
                os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.002)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        pytest.fail(f"the command ended (status {proc.returncode}) before the point: {err}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def stop_group(pgid: int, timeout: float = 5) -> None:
    """SIGSTOP process group ``pgid`` and wait until every member has stopped (kill() only
    queues the signal)."""
    os.killpg(pgid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid:
                states.append(fields[0])
        if all(state in "TtZX" for state in states):
            return
        time.sleep(0.001)
    pytest.fail(f"process group {pgid} did not stop within {timeout} s")


def appeared(folder: Path, name: str, min_bytes: int = 0) -> Callable[[], bool]:
    """A temporary of target ``name`` in ``folder`` (at least ``min_bytes`` long)."""

    def check() -> bool:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return False
        for e in entries:
            if e.name.startswith(f".{name}.") and e.name.endswith(".tmp"):
                try:
                    if e.is_dir() or e.stat().st_size >= min_bytes:
                        return True
                except OSError:
                    pass
        return False

    return check


def run_subprocess(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


# ---- the last resort ----------------------------------------------------------------------
def write_in_a_worker(path: str) -> None:
    """A plain write in a worker process (module level: spawned workers import it)."""
    with open(path, "wb") as fh:
        fh.write(b"\0" * (4 << 20))


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_fault_re_raised_from_a_worker_process_is_one_line(disks: Disks, fault: str) -> None:
    """A write the atomic layer never saw, failing in a worker process: the command group's
    last resort still prints one line (naming the file when the error does)."""
    import multiprocessing

    import click

    from deeplense_cli.commands.group import DeepLenseGroup

    mount = disks.tmpfs("w", size="1m")
    if fault == "read-only":
        disks.read_only(mount)

    @click.group(cls=DeepLenseGroup)
    def group() -> None:
        pass

    @group.command()
    def write() -> None:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(write_in_a_worker, (str(mount / "raw.bin"),))

    res = CliRunner().invoke(group, ["write"])
    if fault == "full":  # a failed write() carries no file name
        one_line_error(res, "no space left on a device; free some space or write elsewhere")
    else:
        one_line_error(res, f"cannot write {mount / 'raw.bin'}: tmpfs ({mount}) is read-only")


# ---- data simulate ------------------------------------------------------------------------
def simulate(out: Path, workers: int = 1, train: int = 4, test: int = 2) -> Result:
    return invoke(
        "data", "simulate", "Model_III", "--out", out, "--train-per-class", train,
        "--test-per-class", test, "--workers", workers, "--seed", 3,
    )  # fmt: skip


def check_sim_files(out: Path) -> int:
    """Every .npy under ``out`` loads completely; returns how many."""
    from deeplense_cli.simulate import load_sample

    files = list(out.rglob("*.npy"))
    for f in files:
        image, _ = load_sample(f)
        assert image.shape == (64, 64)
    assert temporaries(out) == []
    return len(files)


@pytest.mark.parametrize("workers", [1, 2])
def test_simulate_on_a_full_disk_is_one_line(disks: Disks, workers: int) -> None:
    # room for a few of the 33 kB files, not for all 18
    mount = disks.tmpfs("sim", size="256k")
    res = simulate(mount / "data", workers=workers)
    line = one_line_error(res, f"no space left on tmpfs ({mount})", "while writing")
    assert re.search(r"while writing \S+\.npy;", line), line
    assert check_sim_files(mount) < 18


def test_simulate_on_another_filesystem_and_read_only(disks: Disks) -> None:
    mount = disks.tmpfs("sim", size="8m")
    assert simulate(mount / "data").exit_code == 0
    assert check_sim_files(mount) == 18
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.stat().st_mode & 0o777 for p in mount.rglob("*.npy")}
    assert modes == {0o666 & ~umask}  # not mkstemp's 0600
    disks.read_only(mount)
    one_line_error(simulate(mount / "other"), "is read-only", f"tmpfs ({mount})")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_simulate_killed_mid_file_resumes_cleanly(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "data"
    # A file is a temporary for ~0.1 ms of each ~1 ms image: 40 images gave the 2 ms poll
    # about 15 looks and it sometimes saw none; 600 give it hundreds.
    args = cli_command(
        "data", "simulate", "Model_III", "--out", out, "--train-per-class", 600,
        "--test-per-class", 0, "--workers", workers, "--classes", "cdm",
    )  # fmt: skip
    folder = out / "Model_III" / "cdm"

    def mid_file() -> bool:  # a few files written, and one being written
        try:
            names = os.listdir(folder)
        except OSError:
            return False
        return len(names) > 3 and any(TEMP.match(n) for n in names)

    kill_when(args, mid_file)
    assert temporaries(out), "the kill should have left a temporary file"
    done = check_sim_files_except_temps(out)
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert check_sim_files(out) == 600 and done < 600


def check_sim_files_except_temps(out: Path) -> int:
    """After a kill: every finished .npy is complete (temporaries aside)."""
    from deeplense_cli.simulate import load_sample

    files = list(out.rglob("*.npy"))
    for f in files:
        assert load_sample(f)[0].shape == (64, 64)
    return len(files)


# ---- train --------------------------------------------------------------------------------
def train(sim_root: Path, run_dir: Path, *extra: str) -> Result:
    return invoke("train", *MODEL, "--data-root", sim_root, "--run-dir", run_dir, "--output",
                  "quiet", "--no-evaluate", *extra)  # fmt: skip


def epochs_of(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line]


def checkpoint_epoch(run_dir: Path, which: str) -> int:
    from deeplense_cli.runs.rundir import RunDir

    return int(RunDir.open(run_dir).load_checkpoint(which)["epoch"])


@pytest.mark.slow
def test_train_full_disk_at_a_checkpoint_records_no_unsaved_epoch(
    disks: Disks, sim_root: Path
) -> None:
    # ResNet-18: best.pt 45 MB and last.pt 134 MB fit once (epoch 1), not twice (epoch 2)
    mount = disks.tmpfs("runs", size="250m")
    run_dir = mount / "run"
    res = train(sim_root, run_dir, "--epochs", "2")
    one_line_error(res, *full_message(mount, run_dir / "checkpoints" / "last.pt"))
    assert epochs_of(run_dir) == [1]  # not epoch 2, whose checkpoint was never written
    assert checkpoint_epoch(run_dir, "last") == 1
    checkpoint_epoch(run_dir, "best")  # complete
    assert temporaries(mount) == []
    disks.resize(mount, "400m")  # space freed: the run resumes from epoch 1
    res = invoke("train", "--resume", run_dir, "--output", "quiet", "--no-evaluate")
    assert res.exit_code == 0, res.output
    assert epochs_of(run_dir) == [1, 2] and checkpoint_epoch(run_dir, "last") == 2


@pytest.mark.slow
def test_train_full_disk_at_the_first_checkpoint_leaves_nothing(
    disks: Disks, sim_root: Path
) -> None:
    mount = disks.tmpfs("runs", size="60m")
    run_dir = mount / "run"
    res = train(sim_root, run_dir, "--epochs", "1")
    one_line_error(res, *full_message(mount, run_dir / "checkpoints" / "last.pt"))
    assert temporaries(mount) == []
    assert epochs_of(run_dir) == []


def test_train_into_a_read_only_or_unwritable_folder(disks: Disks, sim_root: Path) -> None:
    mount = disks.tmpfs("runs", size="1m")
    (mount / "locked").mkdir()
    disks.immutable(mount / "locked")
    res = train(sim_root, mount / "locked" / "run", "--epochs", "1")
    one_line_error(res, "permission denied", str(mount / "locked"))
    disks.read_only(mount)
    res = train(sim_root, mount / "run", "--epochs", "1")
    one_line_error(res, "is read-only", f"tmpfs ({mount})")
    assert sorted(p.name for p in mount.iterdir()) == ["locked"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    ["best.pt appears in epoch 1", "last.pt appears in epoch 2", "last.pt half written in epoch 2"],
)
def test_train_killed_while_writing_a_checkpoint_resumes_and_leaves_nothing(
    tmp_path: Path, sim_root: Path, point: str
) -> None:
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    name = point.split()[0]
    epoch = int(point.split()[-1])
    at = appeared(ckpt, name, min_bytes=60_000_000 if "half" in point else 0)
    args = cli_command("train", *MODEL, "--data-root", sim_root, "--run-dir", run_dir,
                       "--epochs", "3", "--output", "quiet", "--no-evaluate")  # fmt: skip

    def reached() -> bool:  # in epoch 2, epoch 1's files are the old ones to keep
        return (ckpt / "last.pt").exists() == (epoch == 2) and at()

    kill_when(args, reached)
    assert temporaries(run_dir), "the kill should have left a temporary file"
    assert epochs_of(run_dir) == list(range(1, epoch))
    if epoch == 1:
        assert not (ckpt / "last.pt").exists() and not (ckpt / "best.pt").exists()
    else:
        assert checkpoint_epoch(run_dir, "last") == epoch - 1
        checkpoint_epoch(run_dir, "best")  # complete
    proc = run_subprocess(cli_command("train", "--resume", run_dir, "--output", "quiet",
                                      "--no-evaluate"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert temporaries(run_dir) == []  # was: .last.pt.*.tmp for good
    assert epochs_of(run_dir) == [1, 2, 3] and checkpoint_epoch(run_dir, "last") == 3


@pytest.mark.slow
def test_train_killed_between_the_checkpoint_and_metrics_resumes_with_every_row(
    tmp_path: Path, sim_root: Path
) -> None:
    # What a kill after last.pt was renamed and before metrics.jsonl was written leaves:
    # the window is too short to hit from outside, so the row is taken away instead.
    run_dir = tmp_path / "run"
    assert train(sim_root, run_dir, "--epochs", "1").exit_code == 0
    (run_dir / "metrics.jsonl").write_text("")
    res = invoke("train", "--resume", run_dir, "--epochs", "2", "--output", "quiet",
                 "--no-evaluate")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert epochs_of(run_dir) == [1, 2]


def start_together(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Start ``commands`` at the same instant and wait for all of them."""
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def one_ran_one_was_refused(results: list[subprocess.CompletedProcess[str]], run_dir: Path) -> None:
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
    refused = next(r for r in results if r.returncode == 1)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in refused.stderr and len(errors) == 1, refused.stderr
    assert f"run directory {run_dir} is in use by deeplense train" in errors[0], errors[0]
    assert "Run directory:" not in refused.stderr  # it never started


@pytest.mark.slow
def test_two_trainings_into_one_run_folder_one_runs_the_other_is_refused(
    tmp_path: Path, sim_root: Path
) -> None:
    run_dir = tmp_path / "run"
    args = cli_command("train", *MODEL, "--data-root", sim_root, "--run-dir", run_dir,
                       "--epochs", "2", "--output", "quiet", "--no-evaluate")  # fmt: skip
    one_ran_one_was_refused(start_together(args, args), run_dir)
    assert epochs_of(run_dir) == [1, 2]  # was: [1, 1, 2, 2], both exit 0
    resume = cli_command("train", "--resume", run_dir, "--epochs", "3", "--output", "quiet",
                         "--no-evaluate")  # fmt: skip
    one_ran_one_was_refused(start_together(resume, resume), run_dir)
    assert epochs_of(run_dir) == [1, 2, 3] and checkpoint_epoch(run_dir, "last") == 3


def test_a_run_in_use_is_refused_and_left_alone(
    tmp_path: Path, sim_root: Path, trained_run: Path
) -> None:
    from deeplense_cli.runs.rundir import RunDir

    run_dir = copy_run(trained_run, tmp_path / "run")
    with RunDir(run_dir).writer("train"):
        before = sorted(p.name for p in run_dir.rglob("*"))
        holder = f"run directory {run_dir} is in use by deeplense train (pid {os.getpid()} on"
        one_line_error(train(sim_root, run_dir, "--epochs", "1"), holder)
        res = invoke("train", "--resume", run_dir, "--output", "quiet", "--no-evaluate")
        one_line_error(res, holder)
        assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert RunDir(run_dir).holder() is None  # released with the block


# ---- evaluate -----------------------------------------------------------------------------
def copy_run(trained_run: Path, dest: Path) -> Path:
    """The parts of a run that evaluate and export read (no 134 MB last.pt)."""
    (dest / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "classes.json", "transform.json", "split.json"):
        shutil.copy(trained_run / name, dest / name)
    shutil.copy(trained_run / "checkpoints" / "best.pt", dest / "checkpoints" / "best.pt")
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read-only", "another filesystem"])
def test_evaluate_writes_all_or_nothing(disks: Disks, trained_run: Path, fault: str) -> None:
    mount = disks.tmpfs("run", size="64m")
    run_dir = copy_run(trained_run, mount / "run")
    old = run_dir / "evaluation" / "metrics.json"
    old.parent.mkdir()
    old.write_text('{"old": true}\n')
    if fault == "full":
        disks.fill(mount)
    elif fault == "read-only":
        disks.read_only(mount)
    res = invoke("evaluate", run_dir)
    if fault == "another filesystem":
        assert res.exit_code == 0, res.output
        assert json.loads(old.read_text())["n"] > 0
    else:
        why = f"no space left on tmpfs ({mount})" if fault == "full" else "is read-only"
        one_line_error(res, why, str(run_dir / "evaluation"))
        assert old.read_text() == '{"old": true}\n'
    assert temporaries(mount) == []


def test_evaluations_of_different_models_or_data_never_share_a_folder(
    tmp_path: Path, trained_run: Path, sim_root: Path
) -> None:
    from deeplense_cli.registry.pretrained import resolve_model

    def evaluated(*args: object) -> Path:
        res = invoke("evaluate", *args, "--json")
        assert res.exit_code == 0, res.output
        return Path(json.loads(res.stdout)["out_dir"])

    data = small_tree(tmp_path / "data")
    # every default export is model.onnx: two runs' exports on one folder
    exports = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        exports.append(shutil.copy(resolve_model("Model_III"), tmp_path / run / "model.onnx"))
    first, second = (evaluated(e, "--data", data) for e in exports)
    assert first != second and first.parent == second.parent  # was: the same folder
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()
    assert evaluated(exports[0], "--data", data) == first  # the same model again: its own
    # a run evaluated on two data folders keeps both (was: RUN/evaluation-external/ for all)
    on_data = evaluated(trained_run, "--data", data)
    on_dataset = evaluated(trained_run, "--dataset", "Model_III", "--data-root", sim_root)
    assert on_data != on_dataset and {on_data.parent, on_dataset.parent} == {trained_run}
    assert on_data.name.startswith("evaluation-data-")
    assert on_dataset.name.startswith("evaluation-Model_III_test-")
    assert json.loads((on_data / "metrics.json").read_text())["source"] == str(data)


@pytest.mark.slow
def test_evaluate_killed_while_writing_a_figure(tmp_path: Path, trained_run: Path) -> None:
    run_dir = copy_run(trained_run, tmp_path / "run")
    old = run_dir / "evaluation" / "metrics.json"
    old.parent.mkdir()
    old.write_text('{"old": true}\n')
    args = cli_command("evaluate", run_dir)
    kill_when(args, appeared(old.parent, "roc.png"))
    assert temporaries(run_dir) and old.read_text() == '{"old": true}\n'
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(run_dir) == [] and json.loads(old.read_text())["n"] > 0


# ---- export onnx --------------------------------------------------------------------------
def export(run_dir: Path, out: Path, precision: str) -> Result:
    return invoke("export", "onnx", run_dir, "-o", out, "--precision", precision,
                  "--validation-images", 16)  # fmt: skip


def onnx_ok(path: Path) -> bool:
    import onnx

    onnx.checker.check_model(str(path))
    return True


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_to_another_filesystem(disks: Disks, trained_run: Path, precision: str) -> None:
    mount = disks.tmpfs("out", size="128m")
    res = export(trained_run, mount / "model.onnx", precision)
    assert res.exit_code == 0, res.output  # was: [Errno 18] Invalid cross-device link
    assert onnx_ok(mount / "model.onnx")
    assert sorted(p.name for p in mount.iterdir()) == ["model.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_export_fault_keeps_the_old_file(
    disks: Disks, trained_run: Path, precision: str, fault: str
) -> None:
    mount = disks.tmpfs("out", size="8m")
    target = mount / "model.onnx"
    target.write_bytes(b"the old model")
    if fault == "full":
        disks.fill(mount)
    else:
        disks.read_only(mount)
    res = export(trained_run, target, precision)
    why = full_message(mount, target) if fault == "full" else ("is read-only", str(target))
    line = one_line_error(res, *why)
    assert "dynamo" not in line  # a full disk is not retried with the other exporter
    assert target.read_bytes() == b"the old model"
    assert temporaries(mount) == []


@pytest.mark.slow
@pytest.mark.parametrize("point", ["work folder appears", "model file appears"])
def test_export_killed_midway_keeps_the_old_file(
    tmp_path: Path, trained_run: Path, point: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "model.onnx"
    target.write_bytes(b"the old model")
    args = cli_command("export", "onnx", trained_run, "-o", target, "--validation-images", 16)
    if point == "work folder appears":
        at = appeared(out, "model.onnx")
    else:
        at = lambda: any(n.endswith(".onnx.tmp") for n in os.listdir(out))  # noqa: E731
    kill_when(args, at)
    assert temporaries(out), "the kill should have left a temporary"
    assert target.read_bytes() == b"the old model"
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(out) == [] and onnx_ok(target)


# ---- predict -o ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    res = invoke("export", "onnx", trained_run, "-o", path, "--validation-images", 16)
    assert res.exit_code == 0, res.output
    return path


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full", "read-only", "unwritable", "another filesystem"])
def test_predict_output_all_or_nothing(
    disks: Disks, onnx_model: Path, sim_root: Path, fault: str
) -> None:
    mount = disks.tmpfs("out", size="1m")
    folder = mount / "preds"
    folder.mkdir()
    target = folder / "p.csv"
    target.write_text("old predictions\n")
    if fault == "full":
        disks.fill(mount)
    elif fault == "read-only":
        disks.read_only(mount)
    elif fault == "unwritable":
        disks.immutable(folder)
    res = invoke("predict", onnx_model, sim_root / "Model_III_test", "-o", target)
    if fault == "another filesystem":
        assert res.exit_code == 0, res.output
        assert len(target.read_text().splitlines()) == 1 + 24
    else:
        why = {
            "full": full_message(mount, target),
            "read-only": ("is read-only", str(target)),
            "unwritable": (f"cannot write {target}: permission denied on {folder}",),
        }[fault]
        one_line_error(res, *why)
        assert target.read_text() == "old predictions\n"
    assert temporaries(mount) == []


@pytest.mark.slow
def test_predict_killed_while_writing(tmp_path: Path, onnx_model: Path, sim_root: Path) -> None:
    target = tmp_path / "p.csv"
    target.write_text("old predictions\n")
    inputs = [sim_root / "Model_III", sim_root / "Model_III_test"]
    args = cli_command("predict", onnx_model, *inputs, "-o", target, "--batch-size", 1,
                       "--device", "cpu")  # fmt: skip
    kill_when(args, appeared(tmp_path, "p.csv"))
    assert target.read_text() == "old predictions\n"
    assert temporaries(tmp_path)
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(tmp_path) == []
    assert len(target.read_text().splitlines()) == 1 + 96


# ---- data show -o -------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["full", "read-only", "another filesystem"])
def test_data_show_png_all_or_nothing(disks: Disks, sim_root: Path, fault: str) -> None:
    mount = disks.tmpfs("out", size="1m")
    target = mount / "grid.png"
    target.write_bytes(b"old png")
    if fault == "full":
        disks.fill(mount)
    elif fault == "read-only":
        disks.read_only(mount)
    res = invoke("data", "show", sim_root / "Model_III", "-o", target, "--per-class", 2)
    if fault == "another filesystem":
        assert res.exit_code == 0, res.output
        assert target.read_bytes().startswith(b"\x89PNG")
    else:
        why = full_message(mount, target) if fault == "full" else ("is read-only", str(target))
        one_line_error(res, *why)
        assert target.read_bytes() == b"old png"
    assert temporaries(mount) == []


@pytest.mark.slow
def test_data_show_killed_while_writing(tmp_path: Path, sim_root: Path) -> None:
    target = tmp_path / "grid.png"
    target.write_bytes(b"old png")
    args = cli_command("data", "show", sim_root / "Model_III", "-o", target, "--per-class", 24)
    kill_when(args, appeared(tmp_path, "grid.png"))
    assert target.read_bytes() == b"old png"
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(tmp_path) == [] and target.read_bytes().startswith(b"\x89PNG")


# ---- data download ------------------------------------------------------------------------
def archive(top: str, image_bytes: int, n: int = 2) -> bytes:
    """A released-layout archive; zeros compress, so it unpacks to far more than it is."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for cls in ("axion", "cdm", "no_sub"):
            for i in range(n):
                data = io.BytesIO()
                np.save(data, np.zeros(image_bytes // 8))
                info = tarfile.TarInfo(f"{top}/{cls}/{cls}_{i}.npy")
                info.size = len(data.getvalue())
                tar.addfile(info, io.BytesIO(data.getvalue()))
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server for a folder (yielded); its URL is DEEPLENSE_DOWNLOAD_URL."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("DEEPLENSE_DOWNLOAD_URL", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield folder
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("where", ["download", "unpack"])
def test_download_on_a_full_disk_is_one_line(disks: Disks, mirror: Path, where: str) -> None:
    mount = disks.tmpfs("data", size="2m")
    if where == "download":  # random bytes: the archive itself does not fit
        (mirror / "Model_III.tgz").write_bytes(os.urandom(3 << 20))
        target = mount / ".downloads" / "Model_III.tgz.part"
    else:  # a small archive that unpacks to 6 x 1 MB
        (mirror / "Model_III.tgz").write_bytes(archive("Model_III", 1 << 20, n=2))
        target = mount / "Model_III"
    res = invoke("data", "download", "Model_III", "--data-root", mount)
    one_line_error(res, *full_message(mount, target), "--data-root")
    assert temporaries(mount) == [] and not (mount / "Model_III").exists()


def test_download_into_a_read_only_data_root(disks: Disks, mirror: Path) -> None:
    (mirror / "Model_III.tgz").write_bytes(archive("Model_III", 1024))
    mount = disks.tmpfs("data", size="2m")
    disks.read_only(mount)
    res = invoke("data", "download", "Model_III", "--data-root", mount)
    one_line_error(res, "is read-only", f"tmpfs ({mount})")


@pytest.mark.slow
def test_download_killed_while_unpacking_is_swept(tmp_path: Path, mirror: Path) -> None:
    (mirror / "Model_III.tgz").write_bytes(archive("Model_III", 16 << 20, n=2))
    (mirror / "Model_III_test.tgz").write_bytes(archive("Model_III_test", 1024))
    root = tmp_path / "data"
    args = cli_command("data", "download", "Model_III", "--data-root", root)
    kill_when(args, appeared(root, "Model_III"))
    assert temporaries(root)
    proc = run_subprocess(args)
    assert proc.returncode == 0, proc.stderr
    assert temporaries(root) == []
    assert len(list((root / "Model_III").rglob("*.npy"))) == 6


# ---- special files and Ctrl+C -------------------------------------------------------------
def small_tree(root: Path, n: int = 2) -> Path:
    """A class-per-folder tree of 64 x 64 images (the shipped Model_III's size)."""
    rng = np.random.default_rng(0)
    for cls in ("axion", "cdm", "no_sub"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            np.save(root / cls / f"{i}.npy", rng.random((64, 64), dtype=np.float32))
    return root


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_fifo_or_socket_named_npy_is_named_not_waited_on(tmp_path: Path, kind: str) -> None:
    import socket

    tree = small_tree(tmp_path / "ds")
    special = tree / "axion" / "special.npy"
    if kind == "fifo":
        os.mkfifo(special)  # opening it would wait for a writer forever
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(special))
    env = {**os.environ, "DEEPLENSE_HOME": str(tmp_path / "home")}
    what = "a FIFO (named pipe)" if kind == "fifo" else "a socket"

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(*args), capture_output=True, text=True, timeout=120, env=env
        )

    info = run("data", "info", tree, "--json")
    assert info.returncode == 0, info.stderr
    bad = json.loads(info.stdout)["train"]["bad_examples"]
    assert bad == [{"file": "axion/special.npy", "reason": f"not a regular file but {what}"}]
    refused = run("predict", "Model_III", tree)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"special.npy: not a regular file but {what}" in refused.stderr
    skipped = run("predict", "Model_III", tree, "--skip-bad", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert len(json.loads(skipped.stdout)["predictions"]) == 6
    named = run("predict", "Model_III", special)
    assert named.returncode == 1 and "not a regular file" in named.stderr, named.stderr


HUNG_READ = """
import sys, threading
from pathlib import Path
from deeplense_cli.data import imageset
from deeplense_cli.cli import main

real = imageset.read_image
marker = Path(sys.argv[1])

def hung(path):  # a read that never returns in the reading threads (a hung network mount)
    if threading.current_thread() is not threading.main_thread():
        marker.touch()
        threading.Event().wait()
    return real(path)

imageset.read_image = hung
sys.argv = ["deeplense", "data", "info", sys.argv[2]]
main()
"""


def test_one_ctrl_c_ends_a_command_whose_reader_thread_hangs(tmp_path: Path) -> None:
    from conftest import interruptible

    tree = small_tree(tmp_path / "ds", n=40)
    marker = tmp_path / "reading"
    proc = subprocess.Popen(
        [sys.executable, "-c", HUNG_READ, str(marker), str(tree)],
        env={**os.environ, "DEEPLENSE_HOME": str(tmp_path / "home"), "DEEPLENSE_READ_WORKERS": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the reading threads never started"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)  # was: forever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and err.strip().endswith("Interrupted."), err


# ---- what killed commands leave behind ----------------------------------------------------
def dead_temporary(folder: Path, name: str, size: int = 1000) -> Path:
    """What a writer killed mid-write leaves: a hidden temporary nobody holds a lock on."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.k1ll3d00.tmp"
    path.write_bytes(b"\0" * size)
    return path


def test_any_command_that_opens_a_run_sweeps_what_a_killed_writer_left(
    tmp_path: Path, trained_run: Path, sim_root: Path
) -> None:
    from deeplense_cli.core import atomic

    run_dir = copy_run(trained_run, tmp_path / "run")
    left = [
        dead_temporary(run_dir / "checkpoints", "last.pt"),  # a killed checkpoint write
        dead_temporary(run_dir, "model.onnx"),  # a killed export
        dead_temporary(run_dir / "evaluation-val", "roc.png"),
    ]
    with atomic.atomic_path(run_dir / "checkpoints" / "best.pt.new") as live:
        live.write_bytes(b"being written")
        res = invoke("evaluate", run_dir, "--split", "val")  # was: only train --resume swept
        assert res.exit_code == 0, res.output
        assert live.exists()  # a writer that is alive keeps its temporary
    assert not any(p.exists() for p in left) and temporaries(run_dir) == []
    # a new run under the same root sweeps the runs beside it
    other = dead_temporary(tmp_path / "runs" / "old-run" / "checkpoints", "last.pt")
    res = invoke("train", *MODEL, "--data-root", sim_root, "--run-root", tmp_path / "runs",
                 "--epochs", "1", "--output", "quiet", "--no-evaluate",
                 "--max-train-per-class", "4")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not other.exists()


def test_predict_and_data_show_sweep_their_output_folder(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "ds")
    out = tmp_path / "out"
    left = [dead_temporary(out, "old.csv"), dead_temporary(tree / "cdm", "0.npy")]
    res = invoke("predict", "Model_III", tree, "-o", out / "new.csv")
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in left)  # was: only a .new.csv.*.tmp went
    left = dead_temporary(out, "other.png")
    res = invoke("data", "show", tree, "-o", out / "grid.png")
    assert res.exit_code == 0, res.output
    assert not left.exists()


def test_clean_lists_and_removes_dead_temporaries_of_a_whole_tree(
    tmp_path: Path, deeplense_home: Path
) -> None:
    from deeplense_cli.core import atomic

    dead = [
        dead_temporary(deeplense_home / "runs" / "r1" / "checkpoints", "last.pt", 2_000_000),
        dead_temporary(deeplense_home / "data" / "Model_III" / "axion", "x.npy"),
    ]
    folder = deeplense_home / "runs" / "r2" / ".model.onnx.k1ll3d01.tmp"  # a killed export's
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\0" * 500_000)
    with atomic.atomic_path(deeplense_home / "runs" / "r3" / "live.json") as live:
        live.write_text("{}")
        listed = invoke("clean", "--dry-run")
        assert listed.exit_code == 0, listed.output
        assert all(str(p) in listed.output for p in [*dead, folder])
        assert "Found 3 abandoned temporary file(s) or folder(s), 2.5 MB" in listed.output
        assert all(p.exists() for p in [*dead, folder])  # --dry-run removes nothing
        removed = invoke("clean")
        assert removed.exit_code == 0, removed.output
        assert "Removed 3 abandoned" in removed.output
        assert not any(p.exists() for p in [*dead, folder]) and live.exists()
    other = dead_temporary(tmp_path / "elsewhere", "a.csv")
    assert invoke("clean", tmp_path / "elsewhere").exit_code == 0 and not other.exists()


def test_a_read_only_home_is_told_to_move_not_to_free_space(
    disks: Disks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = small_tree(tmp_path / "ds")
    home = disks.tmpfs("home", size="1m")
    monkeypatch.setenv("DEEPLENSE_HOME", str(home))
    disks.read_only(home)
    line = one_line_error(invoke("data", "info", tree), "is read-only", "DEEPLENSE_HOME")
    assert "space" not in line  # was: "free disk space, or point DEEPLENSE_HOME ..."
    full = disks.tmpfs("full", size="64k")
    disks.fill(full)
    monkeypatch.setenv("DEEPLENSE_HOME", str(full))
    one_line_error(
        invoke("data", "info", tree),
        "no space left",
        "free some space there or point DEEPLENSE_HOME somewhere writable",
    )


def test_skip_bad_skips_an_image_of_the_wrong_size(tmp_path: Path) -> None:
    tree = small_tree(tmp_path / "ds")
    np.save(tree / "cdm" / "small.npy", np.ones((32, 32), np.float32))
    res = invoke("predict", "Model_III", tree)
    one_line_error(res, "small.npy: image is 1x32x32", "pass --resize")
    res = invoke("predict", "Model_III", tree, "--skip-bad", "--json")
    assert res.exit_code == 0, res.output  # was: the same error, --skip-bad or not
    document = json.loads(res.stdout)
    assert len(document["predictions"]) == 6
    assert [s.split(": ", 1)[0] for s in document["skipped"]] == [str(tree / "cdm" / "small.npy")]
