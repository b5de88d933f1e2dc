"""The loggers of one run: chosen and checked by name, fed from the training loop's reporter
events, guarded so that a failing tracker costs a warning and never the run, and recorded in
``RUN/tracking.json`` so that later commands (export, evaluate) add their files to the same
tracker runs."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from deeplense_cli.core import atomic
from deeplense_cli.core.errors import DeepLenseError, first_line
from deeplense_cli.registry.manager import LoggerType, loggers
from deeplense_cli.runs.rundir import RunDir
from deeplense_cli.tracking.base import STATUSES, Logger, Mode, RunInfo, scalars

RECORD_FILE = "tracking.json"
DEFAULT_EXPERIMENT = "deeplense"


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def logger_names(value: Any, where: str = "tracking.loggers") -> list[str]:
    """The logger names of a setting: a list, or one comma-separated string (``--log a,b``);
    ``none`` or empty is no logger. Lower-case, repeats dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(n, str) for n in items):
        raise DeepLenseError(
            f"{where} must be a list of logger names (e.g. [tensorboard, mlflow]), got {value!r}"
        )
    names = [n.strip().lower() for n in items if n.strip()]
    if names == ["none"]:
        return []
    return list(dict.fromkeys(names))


def check_loggers(names: list[str]) -> None:
    """Every name is a registered logger whose libraries import: checked before a run folder
    is made, so a typo or a missing extra is one line instead of a failed run."""
    if not names:
        return
    known = loggers()
    for name in names:
        if name not in known:
            raise DeepLenseError(
                f"unknown logger {name!r}; known: {', '.join(known) or 'none'} "
                "(plugins add more, see `deeplense plugins`)"
            )
        _import_requirements(known[name])


def _import_requirements(kind: LoggerType) -> None:
    for module in kind.requires:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing = isinstance(exc, ModuleNotFoundError) or sys.modules.get(module, 0) is None
            how = "is not installed" if missing else f"fails to import ({first_line(exc)})"
            hint = kind.install or f"pip install {module}"
            raise DeepLenseError(
                f"the {kind.name} logger needs the {module} package, which {how}: {hint}"
            ) from None


def config_loggers(config: dict[str, Any]) -> list[str]:
    return logger_names((config.get("tracking") or {}).get("loggers"))


def experiment_name(config: dict[str, Any]) -> str:
    return str((config.get("tracking") or {}).get("experiment") or DEFAULT_EXPERIMENT)


def read_record(run: RunDir) -> dict[str, Any]:
    """``RUN/tracking.json``: ``{"experiment", "status", "loggers": {name: record}}`` ({}
    when the run was not tracked or the file is unreadable)."""
    try:
        record = json.loads((run.path / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class Tracker:
    """The loggers of one run. Every call into a logger is guarded: the first exception is
    one warning on stderr, the logger is dropped, and the run goes on."""

    def __init__(self, run: RunDir, config: dict[str, Any], names: list[str], mode: Mode) -> None:
        self.run, self.config, self.names, self.mode = run, config, names, mode
        self.loggers: dict[str, Logger] = {}
        self.record: dict[str, Any] = {}
        self.last_row: dict[str, Any] = {}
        self.ended = self.finished = False

    def _guard(self, name: str, method: str, *args: Any) -> Any:
        logger = self.loggers.get(name)
        if logger is None:
            return None
        try:
            return getattr(logger, method)(*args)
        except Exception as exc:  # a tracker must never cost the run
            del self.loggers[name]
            goes_on = (
                "the files were not added to it"
                if self.mode == "attach"
                else "it is off for the rest of this run; training goes on"
            )
            warn(f"the {name} logger failed ({method}: {first_line(exc)}); {goes_on}")
            return None

    def _build(self, name: str, kinds: dict[str, LoggerType]) -> None:
        kind = kinds.get(name)
        try:
            if kind is None:
                raise DeepLenseError("no plugin registers it now")
            _import_requirements(kind)
            self.loggers[name] = kind.factory()
        except Exception as exc:
            warn(f"the {name} logger cannot start ({first_line(exc)}); going on without it")

    def start(self, start_epoch: int = 0) -> None:
        """Open every logger's tracker run and save their ids in ``RUN/tracking.json``."""
        before = read_record(self.run)
        old = before.get("loggers") or {}
        try:
            kinds = loggers()
        except DeepLenseError as exc:  # e.g. two plugins claim one name since the run began
            warn(f"no logger can start: {exc}")
            return
        self.record = {"experiment": experiment_name(self.config), "status": "running"}
        self.record["loggers"] = {}
        for name in self.names:
            self._build(name, kinds)
            prior = old.get(name) if self.mode != "new" else None
            info = RunInfo(
                path=self.run.path,
                name=self.run.path.name,
                experiment=experiment_name(self.config),
                config=self.config,
                mode=self.mode if prior is not None else "new",
                record=prior,
                start_epoch=start_epoch,
            )
            saved = self._guard(name, "start", info)
            if name in self.loggers:
                self.record["loggers"][name] = saved if isinstance(saved, dict) else {}
            elif prior is not None:  # down for now: a later resume can still reopen it
                self.record["loggers"][name] = prior
        if self.mode != "attach":
            self._save()
            self.artifact(self.run.config_path)

    def _save(self) -> None:
        try:
            atomic.write_json(self.run.path / RECORD_FILE, self.record)
        except Exception as exc:  # the run's own writes report a broken disk
            warn(f"cannot record the tracker runs in {RECORD_FILE}: {first_line(exc)}")

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.last_row = row
        epoch = int(row["epoch"])
        metrics = scalars({k: v for k, v in row.items() if k not in ("epoch", "planned_epochs")})
        for name in list(self.loggers):
            self._guard(name, "log_epoch", epoch, metrics)

    def log_test(self, metrics: dict[str, float]) -> None:
        for name in list(self.loggers):
            self._guard(name, "log_test", metrics)

    def artifact(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            return
        try:
            folder = path.resolve().parent.relative_to(self.run.path.resolve()).as_posix()
        except ValueError:  # a file outside the run (export -o elsewhere)
            folder = ""
        folder = "" if folder == "." else folder
        for name in list(self.loggers):
            self._guard(name, "log_artifact", path, folder)

    def end(self, summary: dict[str, Any]) -> None:
        """The run's end: final test metrics, best epoch, the metrics file, the evaluation."""
        self.ended = True
        test = summary.get("test") or {}
        metrics = scalars({k: v for k, v in test.items() if k != "n"}, "test_")
        if summary.get("best_epoch") is not None:
            metrics["best_epoch"] = float(summary["best_epoch"])
        if metrics:
            self.log_test(metrics)
        self.artifact(self.run.metrics_path)
        if test:
            for path in sorted(self.run.evaluation_dir.glob("*")):
                if path.suffix in (".json", ".png"):
                    self.artifact(path)

    def all_epochs_done(self) -> bool:
        row = self.last_row
        return bool(row) and int(row["epoch"]) >= int(row.get("planned_epochs") or 0)

    def finish(self, status: str) -> None:
        if self.finished:
            return
        self.finished = True
        if not self.ended and self.mode != "attach":
            self.artifact(self.run.metrics_path)  # the epochs a stopped run did finish
        for name in list(self.loggers):
            self._guard(name, "finish", status)
        if self.mode != "attach" and self.record:
            self.record["status"] = status
            self._save()


class TrackingReporter:
    """A training-loop reporter that also feeds the run's loggers: ``start`` opens them,
    ``epoch`` logs each epoch, ``end`` the test metrics and files. Everything else goes to
    the wrapped reporter unchanged."""

    def __init__(self, inner: Any, tracker: Tracker) -> None:
        self.inner, self.tracker = inner, tracker

    def start(self, info: dict[str, Any]) -> None:
        self.inner.start(info)
        self.tracker.start(int(info.get("start_epoch") or 0))

    def batch(self, epoch: int, step: int, steps: int, loss: float, images_per_s: float) -> None:
        self.inner.batch(epoch, step, steps, loss, images_per_s)

    def epoch(self, row: dict[str, Any]) -> None:
        # the loggers first: Ray Tune's reporter may end the trial inside its epoch call
        self.tracker.log_epoch(row)
        self.inner.epoch(row)

    def end(self, summary: dict[str, Any]) -> None:
        self.tracker.end(summary)
        self.inner.end(summary)


@contextlib.contextmanager
def tracked(
    config: dict[str, Any], run: RunDir, reporter: Any, resumed: bool = False
) -> Iterator[Any]:
    """``reporter``, wrapped to feed the loggers of ``config`` (``tracking.loggers``) for the
    block; the tracker runs end as finished, failed (an error) or killed (Ctrl+C, SIGTERM).
    Without loggers, ``reporter`` itself."""
    names = config_loggers(config)
    if not names:
        yield reporter
        return
    tracker = Tracker(run, config, names, "resume" if resumed else "new")
    try:
        yield TrackingReporter(reporter, tracker)
    except SystemExit:
        # how Ray Tune ends a trial at a report: stopped early by the scheduler, or at its
        # last epoch, which is a finished run
        tracker.finish("finished" if tracker.all_epochs_done() else "killed")
        raise
    except KeyboardInterrupt:  # Ctrl+C, or SIGTERM in `deeplense train`
        tracker.finish("killed")
        raise
    except BaseException:
        tracker.finish("failed")
        raise
    tracker.finish("finished")


def add_artifacts(run_path: str | Path, paths: Iterable[str | Path]) -> None:
    """Log files written after training (an export, a later evaluation) to the tracker runs
    recorded in ``RUN/tracking.json``; nothing when the run was not tracked."""
    reopened = _reopen(run_path, "attach")
    if reopened is None:
        return
    tracker, record = reopened
    tracker.start()
    for path in paths:
        tracker.artifact(Path(path))
    status = record.get("status")
    tracker.finish(status if status in STATUSES else "finished")


def settle(run_path: str | Path, status: str) -> bool:
    """End the tracker runs of a run whose process did not, with ``status`` (one of
    :data:`STATUSES`), as its caller knows it: Ray Tune may tear a finished trial's worker
    down before its tracker has written the end, which would leave it "running" forever.
    Nothing (False) when ``RUN/tracking.json`` already records an end, or no tracker."""
    reopened = _reopen(run_path, "resume")  # reopened, then ended as it should have
    if reopened is None or reopened[1].get("status") != "running" or status not in STATUSES:
        return False
    tracker = reopened[0]
    tracker.start(int((tracker.run.read_metrics() or [{}])[-1].get("epoch") or 0))
    tracker.finish(status)
    return True


def _reopen(run_path: str | Path, mode: Mode) -> tuple[Tracker, dict[str, Any]] | None:
    """A Tracker over the tracker runs ``RUN/tracking.json`` records (not started), and that
    record; None when the run was not tracked."""
    run = RunDir(run_path)
    record = read_record(run)
    names = [n for n in (record.get("loggers") or {}) if isinstance(n, str)]
    if not names:
        return None
    try:
        config = run.read_config()
    except DeepLenseError:
        config = {}
    config = {**config, "tracking": {"experiment": record.get("experiment")}}
    return Tracker(run, config, names, mode), record
