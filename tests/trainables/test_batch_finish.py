"""uint8 batches finished on the device (trainables/batch_finish.py): the same numbers as the
per-sample float pipeline, random erasing with torchvision's statistics, reproducible per
(seed, epoch, step), and a trial's loaders really hand over uint8."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tests.trainables.conftest import tiny_config
from trainables.batch_finish import BatchFinish
from trainables.engine import train_one_epoch
from trainables.trial_state import TrialState
from trainables.transforms import (build_eval_pixels, build_eval_transform, build_train_pixels,
                                   build_train_transform)

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def photos(tiny_data, count: int = 16) -> list:
    return [Image.open(p).convert("RGB") for p in sorted((tiny_data / "val").rglob("*.jpg"))[:count]]


def test_finishing_a_uint8_batch_equals_the_per_sample_float_pipeline(tiny_data):
    images = photos(tiny_data)
    per_sample = torch.stack([build_eval_transform(24, MEAN, STD, 0.875)(im) for im in images])
    batch = torch.stack([build_eval_pixels(24, 0.875)(im) for im in images])
    assert batch.dtype == torch.uint8
    torch.testing.assert_close(BatchFinish(MEAN, STD)(batch), per_sample, rtol=0, atol=2e-6)

    torch.manual_seed(7)  # the preset's random crops and flips, drawn in the same order both ways
    trained = torch.stack([build_train_transform("light", 24, MEAN, STD)(im) for im in images])
    torch.manual_seed(7)
    pixels = torch.stack([build_train_pixels("light", 24)(im) for im in images])
    torch.testing.assert_close(BatchFinish(MEAN, STD)(pixels), trained, rtol=0, atol=2e-6)


def test_erasing_is_a_function_of_seed_epoch_and_step_and_leaves_the_global_generator():
    finish = BatchFinish(MEAN, STD, erasing=0.5, seed=3)
    batch = torch.full((32, 3, 20, 20), 200, dtype=torch.uint8)
    finish.set_epoch(2)
    before = torch.get_rng_state()
    first = finish(batch, step=5)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(finish(batch, step=5), first)  # a resumed trial erases the same boxes
    assert not torch.equal(finish(batch, step=6), first)
    erased = (first == 0).all(dim=1)  # a box is zero (the mean colour) in every channel
    assert torch.equal(erased, finish.erase_mask(batch.shape, 5))
    assert torch.equal(first[~erased[:, None].expand_as(first)].unique(),
                       BatchFinish(MEAN, STD)(batch)[~erased[:, None].expand_as(first)].unique())
    assert 0 < erased.flatten(1).any(dim=1).sum() < 32
    finish.set_epoch(3)
    assert not torch.equal(finish(batch, step=5), first)


def test_erasing_has_torchvisions_statistics():
    """The fraction of samples erased and of their pixels match torchvision's RandomErasing."""
    samples, side = 4000, 32
    ours = BatchFinish(MEAN, STD, erasing=0.5, seed=0).erase_mask((samples, 3, side, side), step=0)
    torch.manual_seed(0)
    reference = v2.RandomErasing(p=0.5, value=0)
    ones = torch.ones(1, side, side)
    theirs = torch.stack([reference(ones)[0] == 0 for _ in range(samples)])
    for mask in (ours, theirs):
        assert mask.shape == (samples, side, side)
    hit_ours, hit_theirs = ours.flatten(1).any(1).float().mean(), theirs.flatten(1).any(1).float().mean()
    assert hit_ours == pytest.approx(hit_theirs.item(), abs=0.03)
    area_ours = ours.flatten(1).float().mean(1)[ours.flatten(1).any(1)].mean()
    area_theirs = theirs.flatten(1).float().mean(1)[theirs.flatten(1).any(1)].mean()
    assert area_ours == pytest.approx(area_theirs.item(), rel=0.06)
    # each erased region is one axis-aligned box, as torchvision's
    rows, cols = ours.any(dim=2), ours.any(dim=1)
    assert torch.equal(ours, rows[:, :, None] & cols[:, None, :])


def test_a_trials_loaders_hand_over_uint8_and_the_engine_refuses_it_unfinished(tiny_data):
    state = TrialState(tiny_config(tiny_data, epochs=1, max_steps_per_epoch=1, aug={"erasing": 0.25}))
    state.train_loader.sampler.set_epoch(1)
    images, labels, _, _ = next(iter(state.train_loader))
    val_images = next(iter(state.val_loader))[0]
    assert images.dtype == val_images.dtype == torch.uint8
    assert state.finish_train.erasing == 0.25
    with pytest.raises(TypeError, match="uint8 batch reached the model"):
        train_one_epoch(state.forward, [(images, labels, None, 0)], state.optimizer, state.device)
    assert state.train_epoch(1).images == len(labels)
