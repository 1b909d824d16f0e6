"""Optimizers and schedules: dev-decay steps on val accuracy and stops itself; cosine and one-cycle
move per batch, over the trial's whole epochs, each parameter group at its own rate."""

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


def _trace(schedule, optimizer, steps: int, group: int = 0) -> list[float]:
    """The rate of each of ``steps`` optimizer steps, stepping the schedule as a trial does."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        schedule.step_batch()
    schedule.step(0.5)  # the epoch-end step must not move a per-batch schedule
    return rates


def test_cosine_warms_up_per_batch_then_decays_to_zero_at_the_last_step():
    optimizer = _optimizer(1.0)
    schedule = build_schedule(optimizer, name="cosine", epochs=6, steps_per_epoch=10, warmup_epochs=2)
    rates = _trace(schedule, optimizer, 60)
    assert rates[:3] == pytest.approx([1 / 21, 2 / 21, 3 / 21])  # warm-up over 20 steps, per batch
    assert rates[19] == pytest.approx(20 / 21) and rates[20] == pytest.approx(1.0)
    assert rates[20:] == sorted(rates[20:], reverse=True) and rates[-1] < 0.01
    assert rates[10] != rates[11]  # moves within an epoch (it used to step per epoch)
    assert not schedule.converged(optimizer)


def test_onecycle_peaks_at_pct_start_of_the_whole_trial():
    optimizer = _optimizer(0.4)
    schedule = build_schedule(optimizer, name="onecycle", epochs=5, steps_per_epoch=20, pct_start=0.25,
                              div_factor=10, final_div_factor=100)
    rates = _trace(schedule, optimizer, 100)
    peak = max(range(100), key=rates.__getitem__)
    assert peak == 24  # 25% of 100 steps: torch's phase ends at step pct_start * total - 1
    assert rates[peak] == pytest.approx(0.4)
    assert rates[0] == pytest.approx(0.04)  # lr / div_factor
    assert rates[-1] == pytest.approx(0.04 / 100, rel=0.05)  # -> lr / div_factor / final_div_factor
    assert optimizer.param_groups[0]["momentum"] == 0.9  # momentum is not cycled


@pytest.mark.parametrize("name", ["onecycle", "cosine", "dev-decay", "none"])
def test_every_schedule_keeps_each_parameter_groups_ratio(name):
    head, backbone = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([{"params": [head]}, {"params": [backbone], "lr": 0.01}], name="sgd",
                                lr=0.1)
    schedule = build_schedule(optimizer, name=name, epochs=3, steps_per_epoch=4, patience=0)
    for accuracy in (0.5, 0.4, 0.3):
        for _ in range(4):
            ratio = optimizer.param_groups[1]["lr"] / optimizer.param_groups[0]["lr"]
            assert ratio == pytest.approx(0.1)
            optimizer.step()
            schedule.step_batch()
        schedule.step(accuracy)


@pytest.mark.parametrize("name", ["onecycle", "cosine"])
def test_per_batch_schedules_resume_mid_trial_on_the_same_trace(name):
    optimizer = _optimizer(0.2)
    straight = _trace(build_schedule(optimizer, name=name, epochs=4, steps_per_epoch=5, warmup_epochs=1),
                      optimizer, 20)
    optimizer = _optimizer(0.2)
    first = build_schedule(optimizer, name=name, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    head = _trace(first, optimizer, 8)
    # The trial's order: build both, then load the optimizer's state, then the schedule's.
    resumed_optimizer = _optimizer(0.2)
    again = build_schedule(resumed_optimizer, name=name, epochs=4, steps_per_epoch=5, warmup_epochs=1)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    again.load_state_dict(first.state_dict())
    assert head + _trace(again, resumed_optimizer, 12) == pytest.approx(straight)


def test_none_keeps_the_rate():
    optimizer = _optimizer(0.3)
    schedule = build_schedule(optimizer, name="none", epochs=3)
    for accuracy in (0.1, 0.1, 0.1):
        schedule.step(accuracy)
    assert schedule.current_lr(optimizer) == 0.3


def test_a_per_batch_schedule_resumed_with_more_epochs_runs_to_its_new_end():
    optimizer = _optimizer(0.2)
    short = build_schedule(optimizer, name="onecycle", epochs=2, steps_per_epoch=5)
    _trace(short, optimizer, 10)
    longer_optimizer = _optimizer(0.2)
    longer = build_schedule(longer_optimizer, name="onecycle", epochs=3, steps_per_epoch=5)
    longer_optimizer.load_state_dict(optimizer.state_dict())
    longer.load_state_dict(short.state_dict())
    rates = _trace(longer, longer_optimizer, 5)  # would raise "Tried to step 11 times" past the old end
    assert longer.scheduler.total_steps == 15 and rates[-1] < rates[0]
