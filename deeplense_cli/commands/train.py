"""``deeplense train``: parse flags into a configuration and run the training engine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from deeplense_cli.commands.options import (
    data_flags,
    data_options,
    log_option,
    output_option,
    setting_help,
    slurm_flags,
    slurm_options,
)
from deeplense_cli.core.console import console, err_console
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.core.version import __version__
from deeplense_cli.runs.task import TASKS
from deeplense_cli.training import distributed
from deeplense_cli.training.defaults import (
    AMP_MODES,
    AUGMENTS,
    FREEZE,
    METRICS,
    RESUME_CHANGES,
    TRAIN_DEFAULTS,
)
from deeplense_cli.training.reporters import JsonlReporter, SilentReporter

if TYPE_CHECKING:
    from deeplense_cli.runs.rundir import RunDir


@click.command(context_settings={"show_default": True})
@click.option("-m", "--model", help="Architecture name (see `deeplense models`), case-insensitive.")
@data_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML config; flags override it.",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--init", "init", metavar="SOURCE", help=setting_help("init"))
@click.option("--freeze", type=click.Choice(FREEZE), help=setting_help("freeze"))
@click.option("--task", type=click.Choice(TASKS), help=setting_help("task"))
@click.option("--epochs", type=int, help=setting_help("epochs"))
@click.option("--max-minutes", type=float, help=setting_help("max_minutes"))
@click.option("--batch-size", type=int, help=setting_help("batch_size", default=False))
@click.option("--lr", type=float, help=setting_help("lr", default=False))
@click.option("--weight-decay", type=float)
@click.option("--warmup-epochs", type=float)
@click.option("--label-smoothing", type=float)
@click.option("--ema-decay", type=float, help=setting_help("ema_decay"))
@click.option("--grad-clip", type=float, help=setting_help("grad_clip"))
@click.option("--patience", type=int, help=setting_help("patience"))
@click.option(
    "--early-stopping-metric",
    type=click.Choice(list(METRICS)),
    help=setting_help("early_stopping_metric"),
)
@click.option("--min-delta", type=float, help=setting_help("min_delta"))
@click.option("--seed", type=int, help=setting_help("seed"))
@click.option("--device", help=setting_help("device"))
@click.option("--amp", type=click.Choice(AMP_MODES), help=setting_help("amp"))
@click.option("--num-threads", type=int, help=setting_help("num_threads"))
@click.option("--augment", type=click.Choice(AUGMENTS), help=setting_help("augment"))
@click.option("--no-augment", is_flag=True, default=None, help="Same as --augment none.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any setting: model.<param>, train.<key>, data.<key>. Repeatable.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Run directory (default: new one under the run root).",
)
@click.option(
    "--run-root",
    type=click.Path(file_okay=False),
    help="Folder of the runs [default: $DEEPLENSE_RUN_ROOT, else $DEEPLENSE_HOME/runs, else "
    "~/.deeplense/runs].",
)
@click.option(
    "--resume",
    "resume_run",
    type=click.Path(exists=True, file_okay=False),
    help="Continue a run from its last checkpoint, with its own settings: only "
    + ", ".join("--" + key.replace("_", "-") for key in RESUME_CHANGES)
    + " and the SLURM resources may be given (they are applied); other setting flags are an "
    "error.",
)
@click.option("--no-evaluate", is_flag=True, help="Skip the final test-split evaluation.")
@click.option(
    "--nproc-per-node",
    metavar="N|auto",
    help="Train with N processes on this machine (DDP, started as torchrun does; auto: one "
    "per visible GPU; gloo on the CPU). With --slurm: tasks per node [default: one per GPU].",
)
@click.option("--nodes", type=int, help="With --slurm: nodes of one DDP job.")
@click.option("--sync-bn/--no-sync-bn", default=None, help=setting_help("sync_bn"))
@log_option
@output_option
@slurm_options(
    "Submit to SLURM instead of running here.", "With --slurm: follow the job until it ends."
)
def train(**kw: Any) -> None:
    """Train an architecture on a dataset.

    \b
    Examples:
      deeplense train --model cct --dataset Model_III
      deeplense train -m resnet18 --data ./my_data --epochs 5 --set model.dropout=0.1
      deeplense train --resume ~/.deeplense/runs/20261128-...-cct-Model_III-ab12
    """

    # The engine is imported here, not at the top: `deeplense --help` loads every command.
    from deeplense_cli.training.config import load_config_file, parse_overrides, resolve
    from deeplense_cli.training.start import check_device, start_run

    if kw["resume_run"]:
        _resume(kw)
        return

    file_config = load_config_file(kw["config_file"]) if kw["config_file"] else {}
    flags = {
        "model": {"name": kw["model"]},
        "data": data_flags(kw),
        # every train setting with a flag has the setting's name
        "train": {key: kw[key] for key in TRAIN_DEFAULTS if key in kw},
        "slurm": _slurm_section(kw),
        "tracking": {"loggers": kw["loggers"]},
    }
    if kw["no_augment"]:
        flags["train"]["augment"] = "none"
    config = resolve(file_config, flags, parse_overrides(kw["overrides"]))
    if kw["print_config"]:
        import yaml

        click.echo(yaml.safe_dump(config, sort_keys=False), nl=False)
        return
    if not kw["slurm"]:  # a SLURM job checks the device on its node
        check_device(config)
        if _launch(config, kw, None):
            return
    # a SLURM run's folder stays if it fails: it holds the job's logs
    with _ranks(config), start_run(config, kw["run_dir"], kw["run_root"], kw["slurm"]) as run:
        if kw["slurm"]:
            err_console().print(f"Run directory: {run.path}")
        _run(config, run, kw, resume=False)


# What --resume applies from the command line: the train settings of RESUME_CHANGES and the
# SLURM resources; every other setting is the run's own (its config.yaml), and giving one is
# an error rather than ignored.
RESUME_OTHER = {
    "resume_run",
    "output",
    "no_evaluate",
    "print_config",
    "slurm",
    "wait",
    "nproc_per_node",
}
RESUME_SLURM = {"partition", "gpus", "cpus", "mem", "time_limit", "account", "qos", "nodes"}


def _given(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (
        ParameterSource.COMMANDLINE,
        ParameterSource.ENVIRONMENT,
    )


def _flag_name(ctx: click.Context, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def _resume(kw: dict[str, Any]) -> None:
    """``train --resume RUN``: continue with the run's config; refuse the flags that would
    change what it trains, apply the ones of :data:`RESUME_CHANGES` and the SLURM resources
    and say so."""
    from deeplense_cli.training.config import resume_config
    from deeplense_cli.training.start import check_device

    ctx = click.get_current_context()
    allowed = set(RESUME_CHANGES) | RESUME_OTHER | RESUME_SLURM
    refused = [_flag_name(ctx, n) for n in kw if n not in allowed and _given(ctx, n)]
    if refused:
        changeable = ", ".join(_flag_name(ctx, key) for key in RESUME_CHANGES)
        raise click.ClickException(
            f"{', '.join(refused)} cannot change when resuming a run (it continues with "
            f"the settings in its config.yaml); only {changeable} "
            "and the SLURM resources can. Start a new run to change the others"
        )
    changes = [key for key in RESUME_CHANGES if _given(ctx, key)]
    config, run = resume_config(kw["resume_run"], **{key: kw[key] for key in changes})
    slurm = {k: v for k, v in _slurm_section(kw).items() if v is not None}
    config["slurm"].update(slurm)
    if kw["print_config"]:
        import yaml

        click.echo(yaml.safe_dump(config, sort_keys=False), nl=False)
        return
    if not kw["slurm"]:
        check_device(config)
    applied = [f"{_flag_name(ctx, key)} {kw[key]}" for key in changes]
    applied += [f"slurm.{key} {value}" for key, value in slurm.items()]
    if not kw["slurm"] and _launch(config, kw, str(run.path)):
        return
    with _ranks(config):
        if applied and distributed.layout().is_main:
            raw = run.read_config()
            run.write_config({**config, "deeplense_version": __version__, **_recorded(raw)})
        if distributed.layout().is_main:
            err_console().print(
                f"Resuming run {run.path}" + (f" with {', '.join(applied)}" if applied else "")
            )
        _run(config, run, kw, resume=True)


def _recorded(raw: dict[str, Any]) -> dict[str, Any]:
    """What config.yaml records beside the settings and stays (the processes it trained with)."""
    return {"distributed": raw["distributed"]} if raw.get("distributed") else {}


def _slurm_section(kw: dict[str, Any]) -> dict[str, Any]:
    """The SLURM flags as a config ``slurm`` section; ``--nproc-per-node`` gives the tasks per
    node of a job (auto: one per GPU)."""
    section = {**slurm_flags(kw), "nodes": kw["nodes"], "tasks_per_node": None}
    nproc = kw["nproc_per_node"]
    if kw["slurm"] and nproc and str(nproc).strip().lower() != "auto":
        from deeplense_cli.training.launch import processes

        section["tasks_per_node"] = processes(nproc, cuda=False)
    return section


def _launch(config: dict[str, Any], kw: dict[str, Any], run_dir: str | None) -> bool:
    """``--nproc-per-node N`` (N > 1) on this machine: run this same command as N ranks
    through torchrun's launcher, writing ``run_dir`` (the run resumed; None: a new run, named
    here); True when it did. Inside a launched rank, or for one process, False: the caller
    trains here."""
    if not kw["nproc_per_node"] or distributed.launched():
        return False
    from deeplense_cli.core.device import resolve_device
    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.training.launch import launch, processes

    cuda = resolve_device(str(config["train"]["device"])).type == "cuda"
    nproc = processes(kw["nproc_per_node"], cuda)
    if nproc == 1:
        return False
    ctx = click.get_current_context()
    if run_dir is None:
        # Named (and refused if in use or not empty) now, so that every rank, and a later
        # --resume, names one folder; rank 0 makes it once the ranks have met.
        new = RunDir.for_config(config, kw["run_dir"], kw["run_root"])
        new.path.rmdir()
        run_dir = str(new.path)
        args = _rank_args(ctx, run_dir)
    else:
        args = _rank_args(ctx, None)
    launch(nproc, ["train", *args], run_dir=run_dir)
    return True


def _rank_args(ctx: click.Context, run_dir: str | None) -> list[str]:
    """This command's flags, as given, for each rank: without ``--nproc-per-node``, and with
    ``--run-dir`` fixed (so that every rank, and a later ``--resume``, names one folder)."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in ("nproc_per_node", "run_dir", "run_root") or not _given(ctx, name):
            continue
        value = ctx.params[name]
        assert isinstance(param, click.Option)
        flag = max(param.opts, key=len)
        if param.is_flag and param.secondary_opts:  # --x/--no-x
            args.append(flag if value else max(param.secondary_opts, key=len))
        elif param.is_flag:
            if value:
                args.append(flag)
        elif param.multiple:
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    if run_dir:
        args += ["--run-dir", run_dir]
    return args


@contextlib.contextmanager
def _ranks(config: dict[str, Any]) -> Iterator[None]:
    """Inside a launched rank (torchrun, srun): join the other ranks for the block."""
    if not distributed.launched():
        yield
        return
    from deeplense_cli.training.launch import LAUNCHER_ENV

    lay = distributed.setup(str(config["train"]["device"]))
    clean = False
    try:
        yield
        clean = True
    except Exception as exc:
        if not distributed.peer_lost(exc):
            raise
        if os.environ.get(LAUNCHER_ENV):
            raise SystemExit(1) from None  # the launcher names the rank that failed
        raise DeepLenseError(
            f"rank {lay.rank} stopped: another process of the run failed ({first_line(exc)[:160]})"
        ) from None
    finally:
        distributed.shutdown(clean)
    distributed.leave()


def _run(config: dict[str, Any], run: Any, kw: dict[str, Any], resume: bool) -> None:
    from deeplense_cli.commands.display import evaluation_tables, make_reporter
    from deeplense_cli.commands.slurm import train_on_slurm

    if kw.get("slurm"):
        train_on_slurm(config, run, resume=resume, follow=kw.get("wait", False))
        return
    from deeplense_cli.training.loop import train as run_training

    main = distributed.layout().is_main
    reporter = make_reporter(kw["output"]) if main else SilentReporter()
    display = reporter if resume or not main else _NamesTheRun(reporter, run.path)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        # `kill` (a job scheduler's stop) ends the run like Ctrl+C: the reporters say so
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_training(
            config, run, reporter=display, resume=resume, evaluate=not kw["no_evaluate"]
        )
    except KeyboardInterrupt:
        if isinstance(reporter, JsonlReporter):
            reporter.interrupted({"run_dir": str(run.path), "epochs_completed": _epochs_done(run)})
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if not main:
        return
    if kw["output"] == "jsonl":
        if result.evaluation:
            click.echo(json.dumps({"event": "evaluation", **result.evaluation}, default=str))
        return
    if kw["output"] == "quiet":
        return  # the run directory was printed when the run started
    if result.evaluation:
        title = f"{config['model']['name']} on the test split"
        console().print(*evaluation_tables(result.evaluation, title))
        err_console().print(f"Evaluation written to {result.evaluation['out_dir']}")
    err_console().print(f"Run directory: {run.path}")


class _NamesTheRun:
    """Prints the new run's directory when its training starts: a run refused before that
    (bad data or model settings, a folder in use) leaves no folder, so none is named."""

    def __init__(self, inner: Any, path: Any) -> None:
        self.inner, self.path = inner, path

    def start(self, info: dict[str, Any]) -> None:
        err_console().print(f"Run directory: {self.path}")
        self.inner.start(info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _epochs_done(run: RunDir) -> int:
    try:
        return len(run.read_metrics())
    except Exception:  # an unreadable metrics file must not hide the interruption
        return 0
