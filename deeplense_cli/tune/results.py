"""A search's results: one summary per trial, the best trial, its config and the curves."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deeplense_cli.core import atomic
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.tracking.session import settle
from deeplense_cli.tune.layout import (
    BEST_CONFIG,
    PLOT_FILE,
    TRIALS_FILE,
    experiment_dir,
    read_state,
)
from deeplense_cli.tune.runtime import quiet_analysis
from deeplense_cli.tune.settings import TuneSettings
from deeplense_cli.tune.space import trial_config

# How each ended trial's tracker runs end (MLflow's FINISHED / KILLED / FAILED), should its
# worker have been torn down before it said so itself.
TRACKER_STATUS = {"completed": "finished", "stopped": "killed", "error": "failed"}


@dataclass
class TrialSummary:
    trial_id: str
    params: dict[str, Any]
    status: str  # completed, stopped (by ASHA), error, pending, interrupted
    epochs: int
    best_value: float | None
    best_epoch: int | None
    run_dir: str
    error: str | None = None
    curve: list[float | None] = field(default_factory=list)


@dataclass
class TuneOutcome:
    name: str
    path: Path
    metric: str
    mode: str
    max_epochs: int
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config_path: Path | None
    plot_path: Path | None
    finished: bool  # False: interrupted or out of time budget; --resume NAME continues
    interrupted: bool = False  # Ctrl+C stopped the search


def _trial_statuses(exp: Path) -> dict[str, tuple[str, str | None, dict[str, Any]]]:
    """Ray's view of each trial: status, error text, sampled config."""
    from ray.tune import ExperimentAnalysis

    out: dict[str, tuple[str, str | None, dict[str, Any]]] = {}
    try:
        with quiet_analysis():
            analysis = ExperimentAnalysis(str(exp))
    except Exception:  # no experiment state yet: nothing ran
        return out
    for trial in analysis.trials:
        error = None
        if trial.status == "ERROR":
            error = _first_error_line(getattr(trial, "error_file", None) or "")
        out[str(trial.trial_id)] = (str(trial.status), error, dict(trial.config))
    return out


def _first_error_line(path: str) -> str | None:
    p = Path(path)
    if not path or not p.is_file():
        return None
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else None


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None or not isinstance(v, int | float) or math.isnan(float(v)):
        return None
    return float(v)


def summarize(name: str) -> TuneOutcome:
    """Summarise an experiment from Ray's trial states and the trials' run directories;
    write ``trials.json``, ``best_config.yaml`` and ``learning_curves.png``."""
    state = read_state(name)
    exp = experiment_dir(name)
    settings = TuneSettings(**state["settings"])
    metric, sign = settings.metric, (1.0 if settings.mode == "max" else -1.0)
    trials: list[TrialSummary] = []
    for trial_id, (status, error, params) in sorted(_trial_statuses(exp).items()):
        run = RunDir(exp / "runs" / trial_id)
        rows = run.read_metrics()
        curve = [_value(r, metric) for r in rows]
        scored = [(v, int(r["epoch"])) for v, r in zip(curve, rows, strict=True) if v is not None]
        best_value, best_epoch = None, None
        if scored:
            best_value, best_epoch = max(scored, key=lambda s: (sign * s[0], -s[1]))
        epochs = int(rows[-1]["epoch"]) if rows else 0
        if status == "TERMINATED":
            label = "completed" if epochs >= settings.max_epochs else "stopped"
        elif status == "ERROR":
            label = "error"
        elif status == "PENDING" and not rows:
            label = "pending"
        else:
            label = "interrupted"
        params = {k: params[k] for k in state["space"] if k in params}
        if label in TRACKER_STATUS:
            settle(run.path, TRACKER_STATUS[label])
        trials.append(
            TrialSummary(
                trial_id, params, label, epochs, best_value, best_epoch, str(run.path), error, curve
            )
        )
    trials.sort(key=lambda t: t.trial_id)
    best = _pick_best(trials, sign, run_loss=lambda t: _best_loss(t))
    best_config_path = plot_path = None
    if best is not None:
        best_config_path = exp / BEST_CONFIG
        write_best_config(state, best, metric, best_config_path)
    if any(t.curve for t in trials):
        plot_path = exp / PLOT_FILE
        plot_learning_curves(trials, metric, plot_path, best, title=f"{name}: {metric}")
    atomic.write_json(
        exp / TRIALS_FILE,
        [{k: v for k, v in asdict(t).items() if k != "curve"} for t in trials],
    )
    finished = bool(trials) and all(t.status not in ("pending", "interrupted") for t in trials)
    finished = finished and len(trials) >= settings.num_samples
    return TuneOutcome(
        name=name,
        path=exp,
        metric=metric,
        mode=settings.mode,
        max_epochs=settings.max_epochs,
        trials=trials,
        best=best,
        best_config_path=best_config_path,
        plot_path=plot_path,
        finished=finished,
    )


def _best_loss(trial: TrialSummary) -> float:
    for row in RunDir(trial.run_dir).read_metrics():
        if int(row.get("epoch", -1)) == trial.best_epoch:
            return float(row.get("val_loss", math.inf))
    return math.inf


def _pick_best(
    trials: list[TrialSummary], sign: float, run_loss: Callable[[TrialSummary], float]
) -> TrialSummary | None:
    """The winner of ASHA's highest rung: among the trials that trained the most epochs, the
    one with the best metric (at any of its epochs); ties go to the lower validation loss.

    A trial stopped early was behind its peers at a rung; its early, noisy peak does not
    outrank the trials that were promoted past it.
    """
    scored = [t for t in trials if t.best_value is not None and t.status != "error"]
    if not scored:
        return None
    return max(scored, key=lambda t: (t.epochs, sign * float(t.best_value or 0.0), -run_loss(t)))


def write_best_config(
    state: dict[str, Any], best: TrialSummary, metric: str, path: Path
) -> dict[str, Any]:
    """Write the best trial's full resolved config, ready for ``deeplense train --config``."""
    config = trial_config(state["config"], best.params)
    config["train"]["num_threads"] = state["config"]["train"].get("num_threads")
    value = "n/a" if best.best_value is None else f"{best.best_value:.6g}"
    header = (
        f"# Best configuration of tune experiment {state['name']!r}: trial {best.trial_id}, "
        f"{metric} {value} at epoch {best.best_epoch} of {best.epochs}.\n"
        f"# Train it with: deeplense train --config {path.name}\n"
    )
    atomic.write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return config


def plot_learning_curves(
    trials: list[TrialSummary],
    metric: str,
    path: Path,
    best: TrialSummary | None = None,
    title: str | None = None,
) -> None:
    """The metric against the epoch, one line per trial (the best one bold), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        xs = [i + 1 for i, v in enumerate(t.curve) if v is not None]
        ys = [v for v in t.curve if v is not None]
        if not xs:
            continue
        is_best = best is not None and t.trial_id == best.trial_id
        ax.plot(
            xs,
            ys,
            "o-" if is_best else ".-",
            lw=2.5 if is_best else 1.0,
            alpha=1.0 if is_best else 0.7,
            label=f"{t.trial_id} ({t.status}){' best' if is_best else ''}",
            zorder=3 if is_best else 2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    ax.grid(alpha=0.3)
    if len(trials) <= 20:
        ax.legend(fontsize=7, loc="best")
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
