"""Optimizer and learning-rate schedule factories, keyword-only, each a registry entry.

Dev-decay (Wilson et al. 2017, the journal's schedule): ReduceLROnPlateau on validation ACCURACY
(mode max), stepped once per epoch; the trial ends itself once the learning rate falls below min_lr.
The modern recipes' schedules are stepped once per BATCH, over the trial's whole ``epochs``:
``onecycle`` (torch's OneCycleLR: from lr/div_factor up to lr over pct_start of the steps, then down
to lr/div_factor/final_div_factor; momentum is NOT cycled, so ``momentum`` means what it says) and
``cosine`` (linear warm-up over ``warmup_epochs``, then cosine to 0). ``momentum`` and ``nesterov``
apply to sgd only (adam/adamw keep their default betas). With parameter groups (backbone_lr_mult),
every schedule scales each group's own rate; the rate reported is the first group's (the head's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from trainables.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., object]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params, *, lr, momentum, nesterov, weight_decay):
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
    )


@OPTIMIZERS.register("adam")
def _adam(params, *, lr, momentum, nesterov, weight_decay):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, *, lr, momentum, nesterov, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    *,
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(name)(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


@dataclass(frozen=True)
class ScheduleSettings:
    """What every schedule may read (TrialConfig's schedule keys plus the loader's steps per epoch)."""

    epochs: int
    steps_per_epoch: int = 1  # optimizer steps in one epoch (batches, after max_steps_per_epoch)
    factor: float = 0.5  # dev-decay
    patience: int = 1  # dev-decay
    min_lr: float = 1e-8  # dev-decay
    warmup_epochs: int = 0  # cosine
    pct_start: float = 0.3  # onecycle
    div_factor: float = 25.0  # onecycle
    final_div_factor: float = 1e4  # onecycle

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)


class Schedule:
    """One interface for all schedules: ``step_batch()`` after every optimizer step, ``step(val_acc)``
    once per epoch after evaluation; each schedule acts on one of the two. ``converged`` when done."""

    def __init__(self, scheduler, *, min_lr: float = 0.0, on_metric: bool = False,
                 per_batch: bool = False) -> None:
        self.scheduler = scheduler
        self.min_lr = min_lr
        self.on_metric = on_metric
        self.per_batch = per_batch

    def step_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def step(self, val_acc: float) -> None:
        """Once per epoch, after evaluation (dev-decay reads the epoch's validation accuracy)."""
        if self.on_metric:
            self.scheduler.step(val_acc)
        elif self.scheduler is not None and not self.per_batch:
            self.scheduler.step()

    def current_lr(self, optimizer: torch.optim.Optimizer) -> float:
        return float(optimizer.param_groups[0]["lr"])

    def converged(self, optimizer: torch.optim.Optimizer) -> bool:
        """Dev-decay's self-stop: every rate has decayed below min_lr, more epochs would not move."""
        return self.on_metric and max(g["lr"] for g in optimizer.param_groups) < self.min_lr

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is None or not state:
            return
        if self.per_batch:
            # The step reached comes back; the length stays this trial's own. Identical on a plain
            # resume; a trial resumed with more epochs (tuner train --resume --set epochs=N) goes on
            # from its step along the longer schedule instead of running past the end of the old one.
            own = self.scheduler.state_dict()
            state = {**state, **{k: own[k] for k in ("total_steps", "_schedule_phases") if k in own}}
        self.scheduler.load_state_dict(state)


EpochSchedule = Schedule  # the name before per-batch schedules existed


@SCHEDULES.register("dev-decay")
def _dev_decay(optimizer, settings: ScheduleSettings) -> Schedule:
    # eps=0: torch ignores decays smaller than eps (1e-8 by default), which would park the rate just
    # above the default min_lr of 1e-8 for ever and the trial would never end itself.
    plateau = ReduceLROnPlateau(optimizer, mode="max", factor=settings.factor,
                                patience=settings.patience, eps=0.0)
    return Schedule(plateau, min_lr=settings.min_lr, on_metric=True)


@SCHEDULES.register("cosine")
def _cosine(optimizer, settings: ScheduleSettings) -> Schedule:
    warmup, total = settings.warmup_epochs * settings.steps_per_epoch, settings.total_steps

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return Schedule(LambdaLR(optimizer, multiplier), per_batch=True)


@SCHEDULES.register("onecycle")
def _onecycle(optimizer, settings: ScheduleSettings) -> Schedule:
    # max_lr per group: the rates the optimizer was built with (lr, lr x backbone_lr_mult, scaling).
    cycle = OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=settings.total_steps, pct_start=settings.pct_start, anneal_strategy="cos",
        div_factor=settings.div_factor, final_div_factor=settings.final_div_factor,
        cycle_momentum=False,
    )
    return Schedule(cycle, per_batch=True)


@SCHEDULES.register("none")
def _constant(optimizer, settings: ScheduleSettings) -> Schedule:
    return Schedule(None)


def build_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    steps_per_epoch: int = 1,
    factor: float = 0.5,
    patience: int = 1,
    min_lr: float = 1e-8,
    warmup_epochs: int = 0,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    settings = ScheduleSettings(
        epochs=epochs, steps_per_epoch=steps_per_epoch, factor=factor, patience=patience,
        min_lr=min_lr, warmup_epochs=warmup_epochs, pct_start=pct_start, div_factor=div_factor,
        final_div_factor=final_div_factor,
    )
    return SCHEDULES.get(name)(optimizer, settings)
