"""The journal preset's batch ops (batch_tail.py): torchvision's own ops, per sample, on a batch.

Each op is checked against torchvision's functional op applied sample by sample with the same
draws; BatchFinish is checked to run them with the draws of (seed, epoch, step) and nothing else.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from tests.trainables.conftest import tiny_config
from trainables.batch_finish import BatchFinish
from trainables.batch_tail import BatchTail, jitter, rotate
from trainables.trial_state import TrialState
from trainables.transforms import build_batch_tail, build_train_pixels, build_train_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)  # batch_tail's op numbers


def _pixels(batch: int = 6, height: int = 20, width: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(batch * height + width))


@pytest.mark.parametrize("height,width", [(20, 20), (16, 28), (224, 180)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rotation_is_torchvisions_for_each_samples_angle(height, width, dtype):
    # Random angles hit pixels whose source lies exactly between two (ties) at 224 px; the right
    # angles are torchvision's shortcuts (rot90, a copy).
    angles = torch.cat([torch.tensor([10.0, -7.5, 33.0, 0.0, 179.0, 180.0, 90.0, -90.0, 270.0, 360.0]),
                        (torch.rand(22, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 180])
    images = _pixels(len(angles), height, width)
    images = images if dtype == torch.uint8 else images.float() / 255
    expected = torch.stack([TF.rotate(image, float(angle)) for image, angle in zip(images, angles)])
    rotated = rotate(images, angles)
    assert rotated.dtype == dtype
    assert torch.equal(rotated, expected)


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1], [2, 0, 1], [1, 2, 0]])
def test_jitter_is_torchvisions_with_each_samples_factors(order):
    images = _pixels().float() / 255
    factors = 0.3 + 1.4 * torch.rand(6, 3, generator=torch.Generator().manual_seed(1))  # clamps too
    expected = []
    for image, factor in zip(images, factors):
        for op in order:
            image = ADJUST[op](image, float(factor[op]))
        expected.append(image)
    torch.testing.assert_close(jitter(images, factors, torch.tensor(order)), torch.stack(expected),
                               rtol=0, atol=1e-6)


def test_batch_finish_runs_the_tail_with_the_draws_of_its_seed_epoch_and_step():
    pixels = _pixels()
    finish = BatchFinish(MEAN, STD, seed=3, tail=build_batch_tail("journal", {"grayscale": 0.5}))
    finish.set_epoch(2)
    draws = finish.tail_draws(len(pixels), step=5)
    expected = []
    for image, angle, factor, grey in zip(pixels.float() / 255, draws["angle"], draws["factors"], draws["grey"]):
        image = TF.rotate(image, float(angle))
        for op in draws["order"].tolist():
            image = ADJUST[op](image, float(factor[op]))
        image = TF.rgb_to_grayscale(image, num_output_channels=3) if grey else image
        expected.append(TF.normalize(image, list(MEAN), list(STD)))
    torch.manual_seed(0)
    first = finish(pixels, step=5)
    torch.testing.assert_close(first, torch.stack(expected), rtol=0, atol=2e-5)
    assert 0 < int(draws["grey"].sum()) < len(pixels)  # both kinds of sample were checked

    torch.manual_seed(1)  # the global generator plays no part, and is not drawn from
    state = torch.get_rng_state()
    assert torch.equal(finish(pixels, step=5), first)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(finish(pixels, step=6), first)


def test_journal_leaves_rotation_jitter_and_grayscale_to_the_batch():
    assert build_batch_tail("journal") == BatchTail(rotation=10.0, jitter=0.2, grayscale=0.1)
    assert build_batch_tail("journal", {"rotation": 0, "jitter": 0, "grayscale": 0}) is None
    assert build_batch_tail("rrc") is None and build_batch_tail("light") is None
    colourful = Image.new("RGB", (40, 40), (250, 20, 20))
    torch.manual_seed(0)
    pixels = build_train_pixels("journal", 32, {"grayscale": 1.0})(colourful)
    assert int(pixels[0].float().mean()) > 200  # red stays red in the worker
    # A per-sample pipeline (previews) still runs the batch ops, on its one image.
    grey = build_train_transform("journal", 32, MEAN, STD, {"grayscale": 1.0, "rotation": 0})(colourful)
    unnormalised = grey * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    torch.testing.assert_close(unnormalised[0], unnormalised[1], rtol=0, atol=1e-5)


def test_a_journal_trial_finishes_its_batches_with_the_presets_tail(tiny_data):
    state = TrialState(tiny_config(tiny_data, epochs=1, max_steps_per_epoch=1, train_subset=16,
                                   augmentation="journal", aug={"rotation": 5}))
    assert state.finish_train.tail == BatchTail(rotation=5.0, jitter=0.2, grayscale=0.1)
    assert state.finish_eval.tail is None
