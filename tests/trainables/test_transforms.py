"""Augmentation presets: every preset yields normalised squares; their parameters take effect."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainables.transforms import AUGMENTATIONS, CropThenPad, build_eval_transform, build_train_transform

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


def _photo(side: int = 40) -> Image.Image:
    """A real-looking test image: a smooth colour ramp with a bright square (ops have something to do)."""
    ramp = torch.linspace(0, 255, side)
    pixels = torch.stack([ramp[None, :].expand(side, side), ramp[:, None].expand(side, side),
                          255 - ramp[None, :].expand(side, side)], dim=-1).to(torch.uint8)
    pixels[10:20, 10:20] = 250
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize("preset", AUGMENTATIONS.names())
def test_every_preset_runs_the_same_on_the_uint8_cache_path(preset):
    # The decoded-image cache hands the pipeline a uint8 tv_tensors.Image instead of a PIL image.
    from torchvision import tv_tensors

    image = _photo()
    cached = tv_tensors.Image(torch.from_numpy(__import__("numpy").asarray(image).copy()).permute(2, 0, 1))
    transform = build_train_transform(preset, 32, MEAN, STD, {"erasing": 0.5})
    outputs = []
    for source in (image, cached):
        torch.manual_seed(7)
        outputs.append(transform(source))
    assert outputs[0].shape == (3, 32, 32) and torch.equal(outputs[0], outputs[1])


def test_randaugment_num_ops_and_magnitude_take_effect():
    def run(params):
        torch.manual_seed(3)
        return build_train_transform("randaugment", 32, MEAN, STD, params)(_photo())

    def rrc_only():
        torch.manual_seed(3)
        return build_train_transform("rrc", 32, MEAN, STD)(_photo())

    assert torch.equal(run({"num_ops": 0}), rrc_only())  # no op drawn: the crop alone
    assert not torch.equal(run({"num_ops": 2, "magnitude": 20}), rrc_only())
    assert not torch.equal(run({"num_ops": 2, "magnitude": 20}), run({"num_ops": 2, "magnitude": 1}))


@pytest.mark.parametrize("preset", ["trivialaugment", "autoaugment"])
def test_policy_presets_add_their_ops_to_the_crop(preset):
    differs = 0
    for seed in range(4):
        torch.manual_seed(seed)
        policy = build_train_transform(preset, 32, MEAN, STD)(_photo())
        torch.manual_seed(seed)
        crop = build_train_transform("rrc", 32, MEAN, STD)(_photo())
        differs += not torch.equal(policy, crop)
    assert differs >= 2


def test_erasing_blanks_a_box_to_the_mean_in_every_preset():
    for preset in ("light", "trivialaugment"):
        torch.manual_seed(0)
        erased = build_train_transform(preset, 32, MEAN, STD, {"erasing": 1.0})(_photo())
        torch.manual_seed(0)
        kept = build_train_transform(preset, 32, MEAN, STD, {"erasing": 0.0})(_photo())
        blank = (erased == 0).all(dim=0)
        assert blank.sum() >= 4 and not torch.equal(erased, kept), preset


@pytest.mark.parametrize("size,height,width,pad,mode", [
    (224, 224, 224, 28, "reflect"),  # light at 224 px: every window within one reflection
    (32, 32, 37, 4, "reflect"),
    (32, 32, 32, 16, "symmetric"),
    (32, 32, 32, 31, "reflect"),  # windows mostly outside: RandomCrop's own way
    (30, 40, 40, 9, "constant"),
    (32, 32, 32, 15, "edge"),
])
def test_crop_then_pad_gives_random_crops_pixels_for_the_same_seed(size, height, width, pad, mode):
    generator = torch.Generator().manual_seed(size + pad)
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    reference = v2.RandomCrop(size, padding=pad, padding_mode=mode)
    ours = CropThenPad(size, padding=pad, padding_mode=mode)
    for image in (tv_tensors.Image(pixels), pixels.float() / 255):
        for seed in range(60):
            torch.manual_seed(seed)
            expected = reference(image)
            torch.manual_seed(seed)
            got = ours(image)
            assert type(got) is type(expected) and got.dtype == expected.dtype
            assert torch.equal(got, expected), (seed, mode)
