"""``deeplense tune``: an ASHA hyper-parameter search with Ray Tune (engine: deeplense_cli.tune)."""

from __future__ import annotations

import json
from typing import Any

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
from deeplense_cli.core.durations import parse_duration
from deeplense_cli.core.errors import DeepLenseError
from deeplense_cli.core.ranges import check_number
from deeplense_cli.runs.task import TASKS
from deeplense_cli.training.defaults import FREEZE, METRICS, SLURM_DEFAULTS, TASK_METRICS
from deeplense_cli.tune.settings import TuneSettings

# Options that describe a new search; --resume takes them from the experiment instead.
NEW_SEARCH_OPTIONS = (
    "model",
    "init",
    "freeze",
    "dataset",
    "data_path",
    "data_root",
    "config_file",
    "space_file",
    "num_samples",
    "max_epochs",
    "grace_period",
    "reduction_factor",
    "cpus_per_trial",
    "gpus_per_trial",
    "time_budget",
    "metric",
    "task",
    "seed",
    "no_default_trial",
    "name",
    "val_fraction",
    "split_seed",
    "max_train_per_class",
    "max_test_per_class",
    "skip_bad",
    "overrides",
    "loggers",
)


@click.command(context_settings={"show_default": True})
@click.option("-m", "--model", help="Architecture name (see `deeplense models`).")
@click.option(
    "--init",
    metavar="SOURCE",
    help="Fine-tune every trial from a shipped model, a run or a checkpoint (as train "
    "--init); only training settings are searched.",
)
@click.option("--freeze", type=click.Choice(FREEZE), help="With --init, as train --freeze.")
@data_options
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Base config YAML.")
@click.option(
    "--space",
    "space_file",
    type=click.Path(dir_okay=False),
    help="YAML search space overriding/extending the architecture's (null removes a key).",
)
@click.option("--num-samples", type=int, default=TuneSettings.num_samples, help="Number of trials.")
@click.option("--max-epochs", type=int, help="Epochs of a full trial [default: train.epochs].")
@click.option(
    "--grace-period",
    type=int,
    default=TuneSettings.grace_period,
    help="Epochs before ASHA may stop a trial.",
)
@click.option(
    "--reduction-factor",
    type=float,
    default=TuneSettings.reduction_factor,
    help="ASHA keeps 1/N per rung.",
)
@click.option(
    "--cpus-per-trial",
    type=float,
    default=TuneSettings.cpus_per_trial,
    help="Also the trial's torch threads.",
)
@click.option(
    "--gpus-per-trial", type=float, help="GPUs per trial [default: 1 if the cluster has GPUs]."
)
@click.option("--time-budget", help="Stop starting/running trials after e.g. 30m, 2h, 5400s.")
@click.option(
    "--metric",
    help="Validation metric ASHA compares: "
    + ", ".join(f"{metric} ({mode})" for metric, mode in METRICS.items())
    + ". [default: "
    + "; ".join(f"{metrics[0]} with --task {task}" for task, metrics in TASK_METRICS.items())
    + "]",
)
@click.option("--task", type=click.Choice(TASKS), help=setting_help("task"))
@click.option(
    "--seed", type=int, default=TuneSettings.seed, help="Seed of the sampled configurations."
)
@click.option(
    "--no-default-trial",
    is_flag=True,
    help="Sample every trial (by default trial 1 uses the base config's values).",
)
@click.option("--name", help="Experiment name [default: MODEL-DATASET-TIMESTAMP].")
@click.option("--resume", "resume_name", metavar="NAME", help="Continue experiment NAME.")
@click.option("--address", help="Use this running Ray cluster (e.g. ray://head:10001, auto).")
@click.option("--num-cpus", type=int, help="CPUs of the local Ray runtime [default: all].")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a base setting: model.<param>, train.<key>, data.<key>. Repeatable.",
)
@log_option
@output_option
@slurm_options(
    "Run the whole search as one SLURM job (Ray uses all its CPUs).",
    "With --slurm: follow the job until it ends.",
)
@click.pass_context
def tune(ctx: click.Context, **kw: Any) -> None:
    """Search hyper-parameters with Ray Tune and the ASHA scheduler.

    Every trial is a `deeplense train` run; ASHA stops the trials that fall behind on the
    validation metric. Results go to the run root under tune/NAME: a table of trials,
    best_config.yaml (use it with `deeplense train --config`) and learning_curves.png.

    \b
    Examples:
      deeplense tune --model cct --dataset Model_III --num-samples 16 --max-epochs 15
      deeplense tune -m resnet18 --dataset Model_III --space space.yaml --time-budget 2h
      deeplense tune --resume cct-Model_III-20261128-101500
    """
    # The engine is imported here, not at the top: `deeplense --help` loads every command.
    from deeplense_cli import tune as engine

    if kw["num_cpus"] is not None:
        check_number("--num-cpus", kw["num_cpus"], 1, integer=True)
    listener = _listener(kw["output"])
    if kw["resume_name"]:
        given = [
            "--" + p.replace("_", "-")
            for p in NEW_SEARCH_OPTIONS
            if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise DeepLenseError(
                f"--resume continues an experiment with its own settings; drop {', '.join(given)}"
            )
        if kw["slurm"]:
            request = {"resume": kw["resume_name"]}
            _submit(request, _slurm_section(kw), kw)
            return
        outcome = engine.resume_tune(
            kw["resume_name"], address=kw["address"], num_cpus=kw["num_cpus"], on_event=listener
        )
        _report(outcome, kw["output"])
        return

    config, space, settings = _new_search(kw)
    name = kw["name"] or engine.default_name(config)
    engine.experiment_dir(name)  # checks the name
    if kw["slurm"]:
        request = {"config": config, "space": space, "settings": settings.__dict__, "name": name}
        _submit(request, config["slurm"], kw)
        return
    outcome = engine.run_tune(
        config,
        space,
        settings,
        name=name,
        address=kw["address"],
        num_cpus=kw["num_cpus"],
        on_event=listener,
    )
    _report(outcome, kw["output"])


def _slurm_section(kw: dict[str, Any]) -> dict[str, Any]:
    flags = slurm_flags(kw)
    return {**SLURM_DEFAULTS, **{k: v for k, v in flags.items() if v is not None}}


def _new_search(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    from deeplense_cli import tune as engine
    from deeplense_cli.training.config import (
        check_metric,
        default_metric,
        load_config_file,
        parse_overrides,
        resolve,
    )

    file_config = load_config_file(kw["config_file"]) if kw["config_file"] else {}
    flags = {
        "model": {"name": kw["model"]},
        "data": data_flags(kw),
        "train": {"init": kw["init"], "freeze": kw["freeze"], "task": kw["task"]},
        "slurm": _slurm_section(kw),
        "tracking": {"loggers": kw["loggers"]},
    }
    config = resolve(file_config, flags, parse_overrides(kw["overrides"]))
    settings = engine.TuneSettings(
        num_samples=kw["num_samples"],
        # 0 is a value (refused below), not "unset"
        max_epochs=config["train"]["epochs"] if kw["max_epochs"] is None else kw["max_epochs"],
        grace_period=kw["grace_period"],
        reduction_factor=kw["reduction_factor"],
        cpus_per_trial=kw["cpus_per_trial"],
        gpus_per_trial=kw["gpus_per_trial"],
        time_budget_s=parse_duration(kw["time_budget"]) if kw["time_budget"] else None,
        metric=kw["metric"] or default_metric(config),
        seed=kw["seed"],
        default_trial=not kw["no_default_trial"],
    )
    settings.validate()
    check_metric(config, settings.metric)
    override = engine.load_space_file(kw["space_file"]) if kw["space_file"] else None
    space = engine.build_space(config, override)
    return config, space, settings


def _submit(request: dict[str, Any], slurm_section: dict[str, Any], kw: dict[str, Any]) -> None:
    from deeplense_cli import tune as engine
    from deeplense_cli.cluster import wait
    from deeplense_cli.cluster.jobs import submit_tune

    job = submit_tune(request, slurm_section)
    name = request.get("name") or request.get("resume")
    err_console().print(
        f"Submitted SLURM job {job.job_id} (tune {name}); results in "
        f"{engine.experiment_dir(str(name))}; follow with `deeplense jobs logs {job.job_id}`"
    )
    click.echo(job.job_id)
    if kw["wait"]:

        def on_update(state: str, lines: list[str]) -> None:
            for line in lines:
                if line.strip():
                    err_console().print(line, markup=False, highlight=False)
            if not lines:
                err_console().print(f"job {job.job_id}: {state}")

        wait(job, poll=2.0, on_update=on_update)
        _report(engine.summarize(str(name)), kw["output"])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _listener(output: str) -> Any:
    if output == "quiet":
        return None
    if output == "jsonl":

        def emit(event: dict[str, Any]) -> None:
            click.echo(json.dumps(event, default=str))

        return emit

    def show(event: dict[str, Any]) -> None:
        if event["event"] == "start":
            verb = "Resuming" if event["resumed"] else "Starting"
            err_console().print(
                f"{verb} tune experiment {event['name']}: {event['num_samples']} trials of "
                f"{event['model']}, up to {event['max_epochs']} epochs, ASHA on "
                f"{event['metric']} ({event['mode']}); {event['cpus_per_trial']:g} CPU and "
                f"{event['gpus_per_trial']:g} GPU per trial; results in {event['path']}"
            )
        elif event["event"] == "result":
            err_console().print(
                f"trial {event['trial']}  epoch {event.get('epoch')}  "
                f"val loss {_fmt(event.get('val_loss'))}  acc {_fmt(event.get('val_accuracy'))}  "
                f"macro AUC {_fmt(event.get('val_macro_auc'))}"
            )
        elif event["event"] == "error":
            err_console().print(f"[red]trial {event['trial']} failed[/red]")

    return show


def _report(outcome: Any, output: str) -> None:
    from rich.table import Table

    if output == "jsonl":
        click.echo(
            json.dumps(
                {
                    "event": "tune_end",
                    "name": outcome.name,
                    "path": str(outcome.path),
                    "finished": outcome.finished,
                    "best": outcome.best.__dict__ if outcome.best else None,
                    "best_config": str(outcome.best_config_path or ""),
                    "plot": str(outcome.plot_path or ""),
                },
                default=str,
            )
        )
        if outcome.interrupted:
            click.echo(json.dumps({"event": "interrupted", "name": outcome.name}))
            raise KeyboardInterrupt
        return
    keys = sorted({k for t in outcome.trials for k in t.params})
    table = Table(
        title=f"Tune {outcome.name}: {outcome.metric} ({outcome.mode})",
        caption="* best trial; stopped = stopped early by ASHA",
    )
    table.add_column("trial", no_wrap=True)
    for key in keys:
        table.add_column(key.removeprefix("model."), justify="right", overflow="fold")
    table.add_column("best", justify="right", overflow="fold")
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for t in outcome.trials:
        star = "*" if outcome.best is not None and t.trial_id == outcome.best.trial_id else ""
        table.add_row(
            t.trial_id.rsplit("_", 1)[-1] + star,
            *[_fmt(t.params.get(k)) for k in keys],
            _fmt(t.best_value),
            f"{t.epochs}/{outcome.max_epochs}",
            t.status if not t.error else f"{t.status}: {t.error}",
        )
    console().print(table)
    err = err_console()
    if outcome.best is not None:
        err.print(
            f"Best trial {outcome.best.trial_id}: {outcome.metric} {_fmt(outcome.best.best_value)} "
            f"at epoch {outcome.best.best_epoch}; config written to {outcome.best_config_path}"
        )
        err.print(f"Train it: deeplense train --config {outcome.best_config_path}")
    if outcome.plot_path is not None:
        err.print(f"Learning curves: {outcome.plot_path}")
    errors = [t for t in outcome.trials if t.status == "error"]
    if errors and len(errors) == len(outcome.trials):
        raise DeepLenseError(
            f"all {len(errors)} trials failed; first error: {errors[0].error or 'see ' + str(outcome.path)}"
        )
    if not outcome.finished:
        err.print(
            f"[yellow]The search did not finish; continue it with "
            f"`deeplense tune --resume {outcome.name}`[/yellow]"
        )
    if outcome.interrupted:
        raise KeyboardInterrupt  # "Interrupted." and status 130, as every command ends
