"""Optimizer and learning-rate schedule factories, keyword-only, each a registry entry.

Dev-decay (Wilson et al. 2017, the journal's schedule): ReduceLROnPlateau on validation ACCURACY
(mode max), stepped once per epoch; the trial ends itself once the learning rate falls below min_lr.
Cosine: per-epoch cosine decay to 0 after ``warmup_epochs`` of linear warm-up. ``momentum`` and
``nesterov`` apply to sgd only (adam/adamw keep their default betas).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

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


class EpochSchedule:
    """One interface for all schedules: ``step(val_acc)`` once per epoch, ``converged`` when done."""

    def __init__(self, scheduler, *, min_lr: float = 0.0, on_metric: bool = False) -> None:
        self.scheduler = scheduler
        self.min_lr = min_lr
        self.on_metric = on_metric

    def step(self, val_acc: float) -> None:
        """Once per epoch, after evaluation (dev-decay reads the epoch's validation accuracy)."""
        if self.on_metric:
            self.scheduler.step(val_acc)
        elif self.scheduler is not None:
            self.scheduler.step()

    def current_lr(self, optimizer: torch.optim.Optimizer) -> float:
        return float(optimizer.param_groups[0]["lr"])

    def converged(self, optimizer: torch.optim.Optimizer) -> bool:
        """Dev-decay's self-stop: the rate has decayed below min_lr, more epochs would not move."""
        return self.on_metric and self.current_lr(optimizer) < self.min_lr

    def state_dict(self) -> dict:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


@SCHEDULES.register("dev-decay")
def _dev_decay(optimizer, *, epochs, factor, patience, min_lr, warmup_epochs):
    # eps=0: torch ignores decays smaller than eps (1e-8 by default), which would park the rate just
    # above the default min_lr of 1e-8 for ever and the trial would never end itself.
    plateau = ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience, eps=0.0)
    return EpochSchedule(plateau, min_lr=min_lr, on_metric=True)


@SCHEDULES.register("cosine")
def _cosine(optimizer, *, epochs, factor, patience, min_lr, warmup_epochs):
    def multiplier(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return EpochSchedule(LambdaLR(optimizer, multiplier))


@SCHEDULES.register("none")
def _constant(optimizer, *, epochs, factor, patience, min_lr, warmup_epochs):
    return EpochSchedule(None)


def build_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    epochs: int,
    factor: float = 0.5,
    patience: int = 1,
    min_lr: float = 1e-8,
    warmup_epochs: int = 0,
) -> EpochSchedule:
    return SCHEDULES.get(name)(
        optimizer,
        epochs=epochs,
        factor=factor,
        patience=patience,
        min_lr=min_lr,
        warmup_epochs=warmup_epochs,
    )

