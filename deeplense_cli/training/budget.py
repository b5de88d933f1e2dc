"""The plan of a run's optimiser steps, and the time budget (``train.max_minutes``) that sets it.

Without a budget a run plans ``train.epochs`` whole epochs and its learning rate decays over
them. With one, the speed of the first steps plans as many steps as the budget holds,
training and validation together (:meth:`Plan.plan_early`), and each epoch's measured time
plans them again (:meth:`Plan.replan`): a machine's speed drifts during a run. The cosine is
stretched over the plan (:func:`deeplense_cli.training.schedule.lr_factor`), and a re-plan
re-anchors it so that the rate never jumps.

Arithmetic on what the loop measures (seconds, steps taken): no torch, no clock of its own,
so the planner runs and is tested on plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from deeplense_cli.training.schedule import lr_factor

PLAN_PROBE_STEPS = 10  # steps timed to plan a time budget (after one untimed step)


def validation_steps(
    val_images: int,
    eval_batch_size: int,
    batch_size: int,
    precise_bn_images: int,
    mixed_precision: bool,
) -> float:
    """One epoch's validation and precise-BatchNorm pass, in training steps' time."""
    val_batches = math.ceil(val_images / eval_batch_size)
    # A float32 forward pass over a batch costs about a third of a float32 training step,
    # two thirds of a mixed-precision one (validation runs in float32: see Trainer.validate).
    share = 2 / 3 if mixed_precision else 1 / 3
    return (val_batches * eval_batch_size + precise_bn_images) / batch_size * share


@dataclass
class Plan:
    """The optimiser steps a run plans (``total_steps``, in ``epochs`` epochs, the last one
    possibly cut short) and the learning-rate factor at each of them."""

    steps_per_epoch: int
    max_epochs: int  # train.epochs: the most any plan holds
    warmup_steps: int
    min_ratio: float
    max_minutes: float | None = None  # the time budget; None: max_epochs whole epochs
    epochs: int = field(init=False)
    total_steps: int = field(init=False)
    lr_anchor: tuple[int, float] | None = None  # set when a re-plan moves the end
    spent_seconds: float = 0.0  # training + validation time so far (the budget's clock)
    planned: bool = False  # the budget has been fitted (from the first steps or an epoch)

    def __post_init__(self) -> None:
        self.epochs = self.max_epochs
        self.total_steps = self.steps_per_epoch * self.max_epochs

    def lr_factor(self, step: int) -> float:
        """The learning-rate factor at optimiser step ``step`` under the current plan."""
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_ratio, self.lr_anchor)

    @property
    def probe_steps(self) -> int:
        """Steps of the first epoch timed before planning (a quarter of a short epoch)."""
        return min(PLAN_PROBE_STEPS, max(1, self.steps_per_epoch // 4))

    @property
    def needs_probe(self) -> bool:
        """A budget not yet fitted: the loop times the first steps and calls plan_early."""
        return self.max_minutes is not None and not self.planned

    def plan_early(self, per_step: float, validation: float, done: int, epoch: int) -> None:
        """Fit the run into ``max_minutes`` (training plus validation), planned from the
        speed of the first steps (``per_step`` seconds a step; ``validation``: an epoch's
        validation in steps, :func:`validation_steps`) after ``done`` steps and ``epoch``
        whole epochs: as many steps as fit (at most ``max_epochs`` epochs), the last epoch
        cut short where the budget ends; the warm-up shortened to at most a tenth of it."""
        assert self.max_minutes is not None
        per_step_all_in = per_step * (1 + validation / self.steps_per_epoch)
        budget = self.max_minutes * 60 - self.spent_seconds
        steps = int(budget / max(per_step_all_in, 1e-12) + 1e-9)
        self._set(steps, least=done + 1, epoch=epoch)  # mid-epoch: one more
        self._cap_warmup()

    def end_epoch(self, seconds: float, steps: int, done: int, epoch: int) -> None:
        """Count an epoch's ``seconds`` (training + validation, ``steps`` steps) against the
        budget and re-plan from them; ``done`` steps and ``epoch`` epochs are now behind."""
        self.spent_seconds += seconds
        if self.max_minutes is not None:
            self.replan(seconds, steps, done, epoch)

    def replan(self, epoch_seconds: float, epoch_steps: int, done: int, epoch: int) -> None:
        """After an epoch, from its measured time: plan as many steps as the rest of the
        budget holds, more or fewer. Once the warm-up is over, a changed plan re-anchors the
        cosine at the current step and learning rate, so the rate stays continuous and keeps
        decaying, now towards the new end."""
        assert self.max_minutes is not None
        if done >= self.total_steps:
            return  # the plan is complete: nothing left to re-plan
        left = max(0.0, self.max_minutes * 60 - self.spent_seconds)
        per_step = epoch_seconds / max(1, epoch_steps)
        before, factor = self.total_steps, self.lr_factor(done)
        self._set(done + int(left / max(per_step, 1e-12) + 1e-9), least=done, epoch=epoch)
        if self.total_steps != before and done >= self.warmup_steps:
            self.lr_anchor = (done, factor)
        if not self.planned:  # epochs too short to probe
            self._cap_warmup()

    def _set(self, steps: int, least: int, epoch: int) -> None:
        steps = min(self.max_epochs * self.steps_per_epoch, steps)
        sliver = steps % self.steps_per_epoch
        if steps > self.steps_per_epoch and sliver < self.steps_per_epoch / 4:
            steps -= sliver  # no epoch of a few steps at the final learning rate
        self.total_steps = max(least, steps, 1)
        self.epochs = max(epoch, math.ceil(self.total_steps / self.steps_per_epoch))

    def _cap_warmup(self) -> None:
        self.warmup_steps = min(self.warmup_steps, max(1, round(0.1 * self.total_steps)))
        self.planned = True

    # ---- checkpoints ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The plan as a checkpoint stores it."""
        return {
            "planned_epochs": self.epochs,
            "planned_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "lr_anchor": list(self.lr_anchor) if self.lr_anchor is not None else None,
            "spent_seconds": self.spent_seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """A budgeted run's plan from its checkpoint (at most ``max_epochs``, which a resume
        may have lowered); without a budget the plan stays ``max_epochs`` whole epochs."""
        if self.max_minutes is None or not state.get("planned_epochs"):
            return
        self.epochs = min(self.epochs, int(state["planned_epochs"]))
        self.total_steps = int(state.get("planned_steps", self.steps_per_epoch * self.epochs))
        self.warmup_steps = int(state.get("warmup_steps", self.warmup_steps))
        anchor = state.get("lr_anchor")
        self.lr_anchor = (int(anchor[0]), float(anchor[1])) if anchor else None
        self.spent_seconds = float(state.get("spent_seconds", 0.0))
        self.planned = True
