"""The modern recipe's knobs, each shown to take effect (a test here fails if a knob is ignored).

Real components throughout: the shipped sample's images (a few dozen), a resnet18 at width 0.125,
one or two steps per epoch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.trainables.conftest import tiny_config
from trainables.checkpoint import load_checkpoint
from trainables.engine import train_one_epoch
from trainables.inference import load_classifier
from trainables.mixing import BatchMixer
from trainables.runner import run_trial
from trainables.trial_state import TrialState

ONE_STEP = dict(epochs=1, max_steps_per_epoch=1, train_subset=16)


def _first_step_loss(tiny_data, **settings) -> float:
    state = TrialState(tiny_config(tiny_data, **ONE_STEP, **settings))
    return state.train_epoch(1).loss


def test_label_smoothing_changes_the_training_loss_by_its_formula(tiny_data):
    state = TrialState(tiny_config(tiny_data, **ONE_STEP))
    state.train_loader.sampler.set_epoch(1)  # the batch that epoch 1 starts with
    images, labels, _, _ = next(iter(state.train_loader))
    images = state.finish_train(images, step=0)
    with torch.no_grad():
        log_p = state.model.train()(images).log_softmax(dim=1)
    nll, uniform = -log_p.gather(1, labels[:, None]).mean(), -log_p.mean()
    plain = _first_step_loss(tiny_data)
    smoothed = _first_step_loss(tiny_data, label_smoothing=0.2)
    assert plain == pytest.approx(nll.item(), rel=1e-5)
    assert smoothed == pytest.approx((0.8 * nll + 0.2 * uniform).item(), rel=1e-5)


def test_mixup_and_cutmix_change_the_batch_reproducibly_and_mix_prob_gates_them(tiny_data):
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    mixer = BatchMixer(num_classes=4, mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0, seed=3)
    mixer.set_epoch(2)
    before = torch.get_rng_state()
    mixed, targets = mixer(images, labels, step=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left alone
    assert not torch.equal(mixed, images) and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8)) and (targets.max(dim=1).values < 1).any()
    again, again_targets = mixer(images, labels, step=5)  # a function of (seed, epoch, step)
    assert torch.equal(again, mixed) and torch.equal(again_targets, targets)
    assert not torch.equal(mixer(images, labels, step=6)[0], mixed)
    off = BatchMixer(num_classes=4, mixup_alpha=0.4, cutmix_alpha=0.0, mix_prob=0.0, seed=3)
    same, one_hot = off(images, labels, step=5)
    assert torch.equal(same, images) and torch.equal(one_hot, F.one_hot(labels, 4).float())
    assert _first_step_loss(tiny_data, mixup_alpha=0.4) != _first_step_loss(tiny_data)
    assert _first_step_loss(tiny_data, cutmix_alpha=1.0) != _first_step_loss(tiny_data)


def test_mixed_training_accuracy_counts_the_dominant_label():
    # A "model" that always predicts class 0, and a mixer that makes class 0 dominant in every
    # sample: train_acc must be 1.0 against the dominant label (it would be 0.5 against the labels).
    class AlwaysZero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([5.0, 0.0]))

        def forward(self, x):
            return self.bias.expand(x.shape[0], 2)

    def mix(images, labels, step):
        return images, torch.tensor([[0.7, 0.3]]).expand(labels.shape[0], 2)

    batch = (torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 1, 0]), torch.arange(4), 0)
    model = AlwaysZero()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    assert train_one_epoch(model, [batch], optimizer, torch.device("cpu"), mix=mix).accuracy == 1.0
    assert train_one_epoch(model, [batch], optimizer, torch.device("cpu")).accuracy == 0.5


def test_grad_clip_norm_bounds_the_step(tiny_data):
    def step_size(**settings) -> float:
        state = TrialState(tiny_config(tiny_data, **ONE_STEP, momentum=0.0, weight_decay=0.0,
                                       schedule="none", lr=1.0, **settings))
        before = [p.detach().clone() for p in state.model.parameters()]
        state.train_epoch(1)
        return torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(state.model.parameters(), before))).item()

    assert step_size(grad_clip_norm=0.01) == pytest.approx(0.01, rel=1e-3)  # lr 1 x the clipped norm
    assert step_size() > 0.1


def test_onecycle_spans_the_trials_batches_and_reports_each_epochs_first_rate(tiny_data, tmp_path):
    config = tiny_config(tiny_data, epochs=3, train_subset=48, schedule="onecycle", lr=0.3,
                         pct_start=0.5, div_factor=10)
    state = TrialState(config)
    assert state.schedule.scheduler.total_steps == 3 * len(state.train_loader) == 9
    metrics = []
    run_trial(config, report=lambda m, _: metrics.append(m))
    rates = [m["lr"] for m in metrics]
    # step 0: 0.03; peak 0.3 at step 0.5 * 9 - 1 = 3.5; epoch 2 starts at step 3, near the peak.
    assert rates[0] == pytest.approx(0.03) and rates[1] > 0.25 and rates[2] < rates[1]


def test_head_epochs_train_the_head_alone_first_then_every_layer(tiny_data):
    state = TrialState(tiny_config(tiny_data, epochs=2, max_steps_per_epoch=1, train_subset=16,
                                   head_epochs=1))
    start = {k: v.clone() for k, v in state.model.state_dict().items()}
    state.train_epoch(1)
    after_head = {k: v.clone() for k, v in state.model.state_dict().items()}
    moved = sorted(k for k in start if not torch.equal(start[k], after_head[k]))
    assert moved == ["fc.bias", "fc.weight"]  # BatchNorm statistics included: the backbone is frozen
    state.train_epoch(2)
    after_all = state.model.state_dict()
    assert not torch.equal(after_head["conv1.weight"], after_all["conv1.weight"])
    assert not torch.equal(after_head["bn1.running_mean"], after_all["bn1.running_mean"])


def test_backbone_lr_mult_gives_the_backbone_its_own_rate_under_every_schedule(tiny_data):
    for schedule in ("onecycle", "cosine", "dev-decay"):
        state = TrialState(tiny_config(tiny_data, schedule=schedule, backbone_lr_mult=0.1, lr=0.2,
                                       **ONE_STEP))
        head, backbone = state.optimizer.param_groups
        assert {id(p) for p in head["params"]} == {id(p) for p in state.model.fc.parameters()}
        state.train_epoch(1)
        assert backbone["lr"] == pytest.approx(0.1 * head["lr"]), schedule


def test_ema_reports_the_average_and_the_raw_weights_and_inference_uses_the_average(tiny_data, tmp_path):
    reports, dirs = [], []

    def keep(metrics, directory):
        reports.append(metrics)
        dirs.append(tmp_path / "ckpt")
        __import__("shutil").copytree(directory, dirs[-1])

    config = tiny_config(tiny_data, epochs=1, train_subset=32, ema_decay=0.5, lr=0.2)
    run_trial(config, report=keep)
    metrics = reports[-1]
    assert {"val_acc_raw", "val_loss_raw"} <= set(metrics)
    assert metrics["val_loss"] != metrics["val_loss_raw"]
    content = load_checkpoint(dirs[-1])
    assert int(content["ema"]["n_averaged"]) == 2  # two optimizer steps of 16 images
    assert not torch.equal(content["ema"]["model"]["fc.weight"], content["model"]["fc.weight"])
    classifier = load_classifier(dirs[-1])
    assert torch.equal(classifier.model.state_dict()["fc.weight"], content["ema"]["model"]["fc.weight"])
    assert torch.equal(classifier.model.state_dict()["bn1.running_var"],
                       content["ema"]["model"]["bn1.running_var"])  # BatchNorm buffers averaged too
