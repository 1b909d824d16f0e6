"""Optimizers and schedules: dev-decay steps on val accuracy and stops itself; cosine warms up."""

from __future__ import annotations

import pytest
import torch

from trainables.optim import OPTIMIZERS, build_optimizer, build_schedule


def _optimizer(lr: float, name: str = "sgd"):
    return build_optimizer([torch.nn.Parameter(torch.zeros(2))], name=name, lr=lr, momentum=0.9,
                           nesterov=True, weight_decay=1e-4)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizers_take_their_settings(name):
    optimizer = _optimizer(0.01, name)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is True


def test_dev_decay_halves_after_patience_epochs_without_a_better_accuracy():
    optimizer = _optimizer(0.1)
    schedule = build_schedule(optimizer, name="dev-decay", epochs=20, factor=0.5, patience=1, min_lr=1e-8)
    rates = []
    for accuracy in [0.30, 0.40, 0.40, 0.40, 0.50, 0.45, 0.45]:
        schedule.step(accuracy)
        rates.append(schedule.current_lr(optimizer))
    # Mode max: 0.40 after 0.40 is no improvement; the second such epoch (patience 1) halves.
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    assert not schedule.converged(optimizer)


def test_dev_decay_reaches_the_default_min_lr_and_says_converged():
    # torch's ReduceLROnPlateau ignores decays smaller than eps=1e-8 by default, which parked the
    # rate above 1e-8 for ever; the schedule must get below it and report convergence.
    optimizer = _optimizer(4e-8)
    schedule = build_schedule(optimizer, name="dev-decay", epochs=20, factor=0.5, patience=0, min_lr=1e-8)
    steps = 0
    while not schedule.converged(optimizer) and steps < 10:
        schedule.step(0.5)
        steps += 1
    assert schedule.converged(optimizer) and schedule.current_lr(optimizer) < 1e-8
    assert steps == 4  # the first step sets the best; then 4e-8 -> 2e-8 -> 1e-8 -> 5e-9


def test_dev_decay_state_round_trips():
    optimizer = _optimizer(0.1)
    schedule = build_schedule(optimizer, name="dev-decay", epochs=5)
    for accuracy in (0.3, 0.2):
        schedule.step(accuracy)
    again = build_schedule(_optimizer(0.1), name="dev-decay", epochs=5)
    again.load_state_dict(schedule.state_dict())
    assert again.scheduler.num_bad_epochs == 1 and again.scheduler.best == 0.3


def test_cosine_warms_up_then_decays_towards_zero():
    optimizer = _optimizer(1.0)
    schedule = build_schedule(optimizer, name="cosine", epochs=6, warmup_epochs=2)
    rates = [schedule.current_lr(optimizer)]
    for _ in range(5):
        optimizer.step()  # an epoch's training, as in a trial
        schedule.step(0.0)
        rates.append(schedule.current_lr(optimizer))
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert rates[2:] == sorted(rates[2:], reverse=True) and rates[-1] < 0.2
    assert not schedule.converged(optimizer)


def test_none_keeps_the_rate():
    optimizer = _optimizer(0.3)
    schedule = build_schedule(optimizer, name="none", epochs=3)
    for accuracy in (0.1, 0.1, 0.1):
        schedule.step(accuracy)
    assert schedule.current_lr(optimizer) == 0.3
