"""The time budget's planner (``training.budget``) on its own: plans from measured speeds.

The end-to-end runs under ``--max-minutes`` are in test_training.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from deeplense_cli.training.budget import PLAN_PROBE_STEPS, Plan, validation_steps
from deeplense_cli.training.schedule import lr_factor


def budget_plan(steps_per_epoch: int, epochs: int, minutes: float, warmup: int) -> Plan:
    return Plan(
        steps_per_epoch=steps_per_epoch,
        max_epochs=epochs,
        warmup_steps=warmup,
        min_ratio=0.01,
        max_minutes=minutes,
    )


def plan_early(plan: Plan, per_step: float, validation: float = 0.0) -> None:
    """The plan from the first steps, 11 steps into the first epoch (as the loop makes it)."""
    plan.plan_early(per_step, validation, done=11, epoch=0)


def end_epoch(plan: Plan, epoch: int, spent: float, epoch_seconds: float) -> None:
    """The end of whole epoch ``epoch`` (100 steps each), ``spent`` s used with it."""
    plan.spent_seconds = spent - epoch_seconds
    plan.end_epoch(epoch_seconds, 100, done=epoch * 100, epoch=epoch)
    assert plan.spent_seconds == pytest.approx(spent)


def test_without_a_budget_the_plan_is_the_epochs_asked_for() -> None:
    plan = Plan(steps_per_epoch=100, max_epochs=5, warmup_steps=50, min_ratio=0.01)
    assert (plan.epochs, plan.total_steps, plan.warmup_steps) == (5, 500, 50)
    assert not plan.needs_probe
    plan.end_epoch(30.0, 100, done=100, epoch=1)  # the clock runs, the plan stands
    assert (plan.epochs, plan.total_steps, plan.spent_seconds) == (5, 500, 30.0)
    assert [plan.lr_factor(s) for s in (0, 49, 500)] == [
        lr_factor(s, 500, 50, 0.01) for s in (0, 49, 500)
    ]


def test_the_first_steps_timed() -> None:
    assert budget_plan(100, 5, 1.0, 0).probe_steps == PLAN_PROBE_STEPS
    assert budget_plan(12, 5, 1.0, 0).probe_steps == 3  # a quarter of a short epoch
    assert budget_plan(2, 5, 1.0, 0).probe_steps == 1
    plan = budget_plan(100, 5, 1.0, 0)
    assert plan.needs_probe
    plan_early(plan, 0.1)
    assert not plan.needs_probe


def test_validation_costs_a_share_of_a_training_step() -> None:
    # 960 images in 96-image batches, 32-image training batches: 30 batches' worth of
    # images at a third of a step each (float32) ...
    assert validation_steps(960, 96, 32, 0, mixed_precision=False) == pytest.approx(10.0)
    # ... two thirds under mixed precision; the precise-BatchNorm pass counts like validation
    assert validation_steps(960, 96, 32, 320, mixed_precision=True) == pytest.approx(80 / 3)
    assert validation_steps(0, 96, 32, 0, mixed_precision=False) == 0.0
    assert validation_steps(100, 96, 32, 0, mixed_precision=False) == pytest.approx(2.0)


def test_time_budget_plan_arithmetic() -> None:
    # 100 steps an epoch at 0.1 s, no validation: 60 s hold 600 steps = 6 epochs
    t = budget_plan(100, epochs=50, minutes=1.0, warmup=200)
    plan_early(t, 0.1)
    assert (t.epochs, t.total_steps, t.warmup_steps) == (6, 600, 60)  # warm-up: a tenth
    # the first epoch took 30 s in all: the rest (30 s) holds 100 more steps
    end_epoch(t, 1, spent=30.0, epoch_seconds=30.0)
    assert (t.epochs, t.total_steps) == (2, 200)
    # a plan run to its end stays ended, however much time is left
    end_epoch(t, 2, spent=35.0, epoch_seconds=5.0)
    assert (t.epochs, t.total_steps) == (2, 200)
    # later epochs shorten the plan when the budget cannot hold it
    t2 = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    plan_early(t2, 0.1)
    end_epoch(t2, 2, spent=50.0, epoch_seconds=25.0)  # 10 s left at 0.25 s a step: 40 steps
    assert (t2.epochs, t2.total_steps) == (3, 240)  # the third epoch cut short
    # a last epoch of under a quarter is dropped rather than run at the final learning rate
    t4 = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    plan_early(t4, 0.0984)  # 609 steps: 6 epochs and 9 steps
    assert (t4.epochs, t4.total_steps) == (6, 600)
    # a faster first epoch than the probe: the plan grows, up to --epochs
    t3 = budget_plan(100, epochs=8, minutes=1.0, warmup=0)
    plan_early(t3, 0.2)
    assert (t3.epochs, t3.total_steps) == (3, 300)
    end_epoch(t3, 1, spent=5.0, epoch_seconds=5.0)
    assert (t3.epochs, t3.total_steps) == (8, 800)

    # less than one epoch: the first is cut short where the budget ends
    short = budget_plan(100, epochs=50, minutes=0.125, warmup=200)
    plan_early(short, 0.1)
    assert (short.epochs, short.total_steps, short.warmup_steps) == (1, 75, 8)
    tiny = budget_plan(100, epochs=50, minutes=0.001, warmup=200)
    plan_early(tiny, 0.1)
    assert tiny.total_steps == 12  # one step past those already taken

    # validation counts against the budget: 960 images in 96-image batches at a third of
    # a 32-image step each = 1 s an epoch, i.e. 0.01 s a step on top of 0.1 s
    val = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    plan_early(val, 0.1, validation=validation_steps(960, 96, 32, 0, mixed_precision=False))
    assert val.epochs == 6 and 540 <= val.total_steps <= 546


def test_epochs_too_short_to_probe_are_planned_after_the_first() -> None:
    # a 2-step epoch never reaches the probe: the first epoch's time plans the run
    plan = budget_plan(2, epochs=50, minutes=0.5, warmup=20)
    plan.end_epoch(1.0, 2, done=2, epoch=1)  # 0.5 s a step: 29 s hold 58 more
    assert not plan.needs_probe
    assert (plan.epochs, plan.total_steps, plan.warmup_steps) == (30, 60, 6)
    assert plan.lr_anchor is None  # still in the warm-up: nothing to re-anchor


def test_time_budget_replans_keep_the_learning_rate_continuous() -> None:
    t = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    plan_early(t, 0.1)
    assert t.total_steps == 600
    end_epoch(t, 1, spent=10.0, epoch_seconds=10.0)  # as planned: the plan stands
    assert (t.total_steps, t.lr_anchor) == (600, None)
    factors = [t.lr_factor(s) for s in range(201)]
    # the machine speeds up: 44 s left at 0.06 s a step hold 733 more steps
    end_epoch(t, 2, spent=16.0, epoch_seconds=6.0)
    assert (t.epochs, t.total_steps) == (10, 933)
    assert t.lr_factor(200) == pytest.approx(factors[200])  # no jump ...
    factors += [t.lr_factor(s) for s in range(201, 301)]
    # ... and slows down: 28 s left at 0.16 s a step hold 175 more
    end_epoch(t, 3, spent=32.0, epoch_seconds=16.0)
    assert (t.epochs, t.total_steps) == (5, 475)
    assert t.lr_factor(300) == pytest.approx(factors[300])
    factors += [t.lr_factor(s) for s in range(301, 476)]
    assert all(a >= b for a, b in itertools.pairwise(factors))  # decays monotonically ...
    assert factors[-1] == pytest.approx(0.01)  # ... to the floor at the plan's end
    steps = np.diff(factors)
    assert steps.min() > -0.01  # and smoothly: no step drops more than 1% of the peak


def test_time_budget_replans_every_epoch_still_follow_one_cosine() -> None:
    """A budget re-plans after every epoch, and machine noise moves the plan by a few steps
    each time. The rate must still trace one cosine over the run: each re-plan used to
    restart a whole cosine from the current rate, whose flat top held the rate near its peak
    (0.94 of it half-way through this run) until the last few epochs."""
    t = budget_plan(100, epochs=100, minutes=10.0, warmup=0)
    plan_early(t, 0.1)  # 600 s at 0.1 s a step: 60 epochs
    spent, factors = 0.0, []
    for epoch in range(1, 61):
        factors += [t.lr_factor(s) for s in range((epoch - 1) * 100, epoch * 100)]
        seconds = 10.0 * (1.02 if epoch % 2 else 0.98)  # a noisy machine: +-2% an epoch
        spent += seconds
        end_epoch(t, epoch, spent=spent, epoch_seconds=seconds)
        if epoch * 100 >= t.total_steps:
            break
    assert 5900 <= t.total_steps <= 6100 and t.lr_anchor is not None  # it did re-plan
    single = [lr_factor(s, t.total_steps, 0, 0.01) for s in range(len(factors))]
    assert max(abs(a - b) for a, b in zip(factors, single, strict=True)) < 0.05
    assert factors[len(factors) // 2] == pytest.approx(0.5, abs=0.05)
    assert all(a >= b for a, b in itertools.pairwise(factors))


def test_a_checkpointed_plan_restores_only_under_a_budget() -> None:
    t = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    plan_early(t, 0.1)
    end_epoch(t, 2, spent=16.0, epoch_seconds=6.0)  # re-planned and re-anchored
    state = t.state()
    assert state["planned_steps"] == t.total_steps and state["lr_anchor"] == list(t.lr_anchor)
    resumed = budget_plan(100, epochs=50, minutes=1.0, warmup=0)
    resumed.restore(state)
    assert resumed == t and not resumed.needs_probe
    # a resume that lowers --epochs caps the plan
    lowered = budget_plan(100, epochs=4, minutes=1.0, warmup=0)
    lowered.restore(state)
    assert lowered.epochs == 4
    # without a budget the checkpoint's plan does not apply: --epochs whole epochs
    plain = Plan(steps_per_epoch=100, max_epochs=8, warmup_steps=0, min_ratio=0.01)
    plain.restore(state)
    assert (plain.epochs, plain.total_steps, plain.lr_anchor) == (8, 800, None)
