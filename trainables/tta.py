"""Test-time augmentation (TTA): named sets of views of each image whose softmax a prediction averages.

Averaging a model's answer over a few views of the same image (its mirror, crops, other scales) is
usually worth a little accuracy, at one forward pass per view. Each set is a registered name, so
``tuner predict --tta NAME``, its help text and the tests share one definition, views in a fixed order.

Every view is cut from one *base* batch: the eval transform's output at ``round(image_size *
base_scale)`` pixels (``Classifier.view_transform``). Crops that need a larger image than the model's
input (``five-crop``) get it from the base, and cutting views out of a whole batch by slicing,
flipping and resizing tensors costs nothing next to the forward passes; decoding and resizing each
image once per view would not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

# Resize to 1/0.875 of the input side, then crop the input side: ImageNet's 256 -> 224 evaluation.
FIVE_CROP_SCALE = 1 / 0.875
MULTI_SCALES = (1.0, 1.125, 1.25)  # input sides of multi-scale, as multiples of image_size


@dataclass(frozen=True)
class TTAViews:
    name: str
    summary: str  # one line for --help and the docs
    base_scale: float  # the base images are round(image_size * base_scale) pixels square
    # (base [B, C, H, W], image_size) -> the views, each [B, C, side, side], in the documented order
    views: Callable[[torch.Tensor, int], list[torch.Tensor]]

    def base_side(self, image_size: int) -> int:
        """Side of the square base images this set cuts its views from."""
        return round(image_size * self.base_scale)


def mirror(images: torch.Tensor) -> torch.Tensor:
    """Left-right mirror."""
    return torch.flip(images, dims=[-1])


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """Antialiased bilinear resize to a ``side`` square (torchvision's resize of float tensors)."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)


def shifted_crops(images: torch.Tensor) -> list[torch.Tensor]:
    """The image reflect-padded by 1/8 of its side (at least 1 px) and cropped back at the four
    corners: top-left, top-right, bottom-left, bottom-right. A five-crop that needs no larger base."""
    side = images.shape[-1]
    pad = max(1, side // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad)]
    return [padded[..., y : y + side, x : x + side] for y, x in offsets]


def five_crops(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    """``size`` squares at the corners (top-left, top-right, bottom-left, bottom-right), then the
    centre one; the centre's offsets round as torchvision's center_crop/five_crop do."""
    height, width = base.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"five crops of {size} px need a base of at least {size} px, "
                         f"got {height}x{width}")
    bottom, right = height - size, width - size
    top, left = int(round(bottom / 2.0)), int(round(right / 2.0))
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (top, left)]
    return [base[..., y : y + size, x : x + size] for y, x in offsets]


def _none(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [base]


def _flips(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [base, mirror(base)]


def _crops(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [base, mirror(base), *shifted_crops(base)]


def _ten_crop(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    crops = five_crops(base, size)
    return [*crops, *(mirror(crop) for crop in crops)]


def _multi_scale(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    # Every registered backbone ends in adaptive average pooling, so it takes the larger inputs as
    # they are: the model sees more pixels of the same picture rather than a resampled copy.
    views = []
    for scale in MULTI_SCALES:
        scaled = resize(base, round(size * scale))
        views += [scaled, mirror(scaled)]
    return views


def _twelve(base: torch.Tensor, size: int) -> list[torch.Tensor]:
    whole = resize(base, size)
    return [whole, mirror(whole), *_ten_crop(base, size)]


# The order of each set's views (what ``views`` returns, index by index); tests rely on it.
#   none         image
#   flips        image, mirror
#   crops        image, mirror, then the padded image's top-left, top-right, bottom-left, bottom-right
#   five-crop    top-left, top-right, bottom-left, bottom-right, centre
#   ten-crop     five-crop's five, then the mirror of each in the same order
#   multi-scale  1x, its mirror, 1.125x, its mirror, 1.25x (the base itself), its mirror
#   twelve       the whole image (the base resized to the input side), its mirror, ten-crop's ten
TTA_VIEWS: dict[str, TTAViews] = {
    entry.name: entry
    for entry in (
        TTAViews("none", "the image alone (1 view)", 1.0, _none),
        TTAViews("flips", "the image and its left-right mirror (2 views)", 1.0, _flips),
        TTAViews("crops", "the image, its mirror and the four corner crops of the image "
                 "reflect-padded by 1/8 of its side (6 views)", 1.0, _crops),
        TTAViews("five-crop", "the four corner crops and the centre crop of the image resized "
                 "to 1/0.875 (~1.14x) of the input side (5 views)", FIVE_CROP_SCALE, five_crops),
        TTAViews("ten-crop", "five-crop and the mirror of each crop (10 views)", FIVE_CROP_SCALE,
                 _ten_crop),
        TTAViews("multi-scale", "the image at 1x, 1.125x and 1.25x the input side, each with its "
                 "mirror (6 views, larger inputs than training's)", MULTI_SCALES[-1], _multi_scale),
        TTAViews("twelve", "the whole image and its mirror, plus ten-crop (12 views)",
                 FIVE_CROP_SCALE, _twelve),
    )
}


def tta_names() -> tuple[str, ...]:
    """The registered names in a fixed order (for --help): the three older sets, then the larger ones."""
    return tuple(TTA_VIEWS)


def get_tta(name: str) -> TTAViews:
    try:
        return TTA_VIEWS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value names no entry
        raise ValueError(f"unknown test-time augmentation {name!r}; valid: "
                         f"{', '.join(tta_names())}") from None
