"""Augmentation presets: every preset yields normalised squares; their parameters take effect."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from trainables.transforms import AUGMENTATIONS, build_eval_transform, build_train_transform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.mark.parametrize("preset", AUGMENTATIONS.names())
def test_every_preset_turns_any_image_into_a_normalised_square(preset):
    wide = Image.new("RGB", (90, 40), (255, 128, 0))
    out = build_train_transform(preset, 32, MEAN, STD)(wide)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.max() <= (1 - 0.5) / 0.25 + 1e-5 and out.min() >= (0 - 0.5) / 0.25 - 1e-5


def test_journal_parameters_take_effect():
    torch.manual_seed(0)
    colourful = Image.new("RGB", (64, 64), (250, 20, 20))
    gray = build_train_transform("journal", 32, MEAN, STD, {"grayscale": 1.0, "rotation": 0})(colourful)
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    kept = build_train_transform("journal", 32, MEAN, STD, {"grayscale": 0.0, "jitter": 0})(colourful)
    assert kept[0].mean() > kept[1].mean() + 1


def test_eval_crop_keeps_the_centre_fraction():
    # A 64 px image whose outer quarter is black: eval_crop 0.5 sees only the white centre.
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    centre = build_eval_transform(32, (0, 0, 0), (1, 1, 1), eval_crop=0.5)(image)
    whole = build_eval_transform(32, (0, 0, 0), (1, 1, 1), eval_crop=1.0)(image)
    assert centre.min() > 0.95 and whole.min() < 0.05
