"""An 8-trial ASHA search against the architecture's defaults, on a small simulated Model_III.

What it does, on a local 2-CPU Ray runtime (one CPU and one torch thread per trial):

1. simulates Model_III (3 x 300 training, 3 x 100 test images) unless it is there already;
2. ``deeplense_cli.tune.run_tune``: 8 trials over the architecture's own ``tune_space``,
   ASHA on validation macro AUC (grace period 1, reduction factor 2, up to --max-epochs);
3. trains the default configuration (the same code, the same number of epochs, two threads);
4. evaluates both on the held-out test folder (each run's best-validation checkpoint) and
   prints a markdown table, the search's cost and the machine.

The search's best trial is the one that reached ASHA's top rung with the best validation
macro AUC; its run directory holds the model that is evaluated (no retraining).

    OMP_NUM_THREADS=1 python benchmarks/bench_tune.py            # LeViT, 8 trials, 8 epochs
    OMP_NUM_THREADS=1 python benchmarks/bench_tune.py --model cct --max-epochs 6
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deeplense_cli.core.cpu import cpu_model

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="levit")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=2.0)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--data-root", type=Path, default=Path(tempfile.gettempdir()) / "deeplense-bench-tune"
    )
    parser.add_argument("--limit-s", type=float, default=600.0, help="the time it must fit in")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="dl-bench-tune-"))
    os.environ["DEEPLENSE_HOME"] = str(home)  # fresh runs and cache; nothing in ~/.deeplense

    import ray
    import torch

    from deeplense_cli.evaluation.evaluate import evaluate_run
    from deeplense_cli.runs.rundir import RunDir
    from deeplense_cli.simulate import simulate_dataset
    from deeplense_cli.training.config import resolve
    from deeplense_cli.training.loop import train
    from deeplense_cli.tune import TuneSettings, build_space, run_tune

    start_load = load()
    t_all = time.perf_counter()
    if (
        not (args.data_root / "Model_III").is_dir()
        or not (args.data_root / "Model_III_test").is_dir()
    ):
        simulate_dataset(
            "Model_III", args.data_root, args.train_per_class, args.test_per_class, seed=0
        )
    data = {
        "dataset": "Model_III",
        "data_root": str(args.data_root),
        "max_train_per_class": args.train_per_class,
        "max_test_per_class": args.test_per_class,
    }
    config = resolve({}, {"model": {"name": args.model}, "data": data})
    config["train"]["epochs"] = args.max_epochs

    # ---- the search
    settings = TuneSettings(
        num_samples=args.samples,
        max_epochs=args.max_epochs,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        cpus_per_trial=1,
        gpus_per_trial=0,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    outcome = run_tune(config, build_space(config), settings, name="bench", num_cpus=args.cpus)
    t_tune = time.perf_counter() - t0
    ray.shutdown()
    if outcome.best is None:
        print("the search produced no result", file=sys.stderr)
        return 1
    best_run = RunDir(outcome.best.run_dir)
    t0 = time.perf_counter()
    tuned_test = evaluate_run(best_run, device="cpu").metrics
    t_eval = time.perf_counter() - t0
    tuned_cfg = best_run.read_config()
    tuned_val = outcome.best.best_value

    # ---- the defaults, the same epochs, the same code
    default_cfg = resolve({}, {"model": {"name": args.model}, "data": data})
    default_cfg["train"]["epochs"] = args.max_epochs
    default_cfg["train"]["num_threads"] = args.cpus
    run = RunDir.create(home / "runs", args.model, "Model_III")
    t0 = time.perf_counter()
    result = train(default_cfg, run, evaluate=True)
    t_default = time.perf_counter() - t0
    default_val = (result.best or {}).get("val_macro_auc")
    default_test = result.evaluation or {}
    total = time.perf_counter() - t_all

    # ---- report
    epochs_run = sum(t.epochs for t in outcome.trials)
    stopped = sum(t.status == "stopped" for t in outcome.trials)
    arch = config["model"]["name"]
    print(
        f"## `deeplense tune` ({arch}, {args.samples} trials, ASHA grace {args.grace_period}, "
        f"reduction {args.reduction_factor:g}, up to {args.max_epochs} epochs) vs defaults\n"
    )
    print(
        f"Model_III simulated, {args.train_per_class} training (10% of them validation) and "
        f"{args.test_per_class} test images per class, 64x64.\n"
    )
    space_keys = sorted(outcome.best.params)
    header = ["config", *space_keys, "epochs", "val macro AUC", "test macro AUC", "test acc"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def value_of(cfg: dict[str, Any], key: str) -> Any:
        if key.startswith("model."):
            return cfg["model"]["params"].get(key[6:])
        return cfg["train"].get(key)

    for label, cfg, val, test, epochs in (
        ("defaults", default_cfg, default_val, default_test, result.epochs_completed),
        (
            f"tuned (trial {outcome.best.trial_id})",
            tuned_cfg,
            tuned_val,
            tuned_test,
            outcome.best.epochs,
        ),
    ):
        row = [label, *[fmt(value_of(cfg, k), 3) for k in space_keys], str(epochs)]
        row += [fmt(val), fmt(test.get("macro_auc")), fmt(test.get("accuracy"))]
        print("| " + " | ".join(row) + " |")
    print()
    print("| trial | status | epochs | best val macro AUC |")
    print("|---|---|---|---|")
    for t in outcome.trials:
        print(f"| {t.trial_id} | {t.status} | {t.epochs} | {fmt(t.best_value)} |")
    print()
    print(
        f"Search: {t_tune:.0f} s wall for {len(outcome.trials)} trials, {epochs_run} trial-epochs "
        f"of {len(outcome.trials) * args.max_epochs} without ASHA ({stopped} trials stopped early). "
        f"Defaults: {t_default:.0f} s (training + test evaluation). Tuned evaluation {t_eval:.0f} s. "
        f"Total {total:.0f} s (limit {args.limit_s:.0f} s: {'OK' if total <= args.limit_s else 'OVER'})."
    )
    better_val = tuned_val is not None and default_val is not None and tuned_val >= default_val
    t_auc, d_auc = tuned_test.get("macro_auc"), default_test.get("macro_auc")
    better_test = t_auc is not None and d_auc is not None and t_auc >= d_auc
    print(
        f"Tuned >= defaults: validation {'yes' if better_val else 'NO'}, "
        f"test {'yes' if better_test else 'NO'}."
    )
    print(
        f"\nMachine: {cpu_model()}, {os.cpu_count()} logical CPUs (Ray runtime: {args.cpus}), "
        f"load average at start {start_load}, at end {load()} (shared with other developers); "
        f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}."
    )
    print(f"Files: {outcome.path} (best_config.yaml, learning_curves.png), default run {run.path}")
    return 0 if total <= args.limit_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
