"""Augmentation presets on torchvision.transforms.v2, each with parameters a search may vary.

The journal ablated augmentations by hand and wondered whether grayscale and centre crops hurt; here
each preset is a registered name whose parameters (rotation degrees, minimum crop scale, jitter
strength, grayscale probability, eval centre-crop fraction) are ordinary searchable keys under ``aug``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.transforms import v2

from trainables.registry import Registry


@dataclass(frozen=True)
class AugmentationPreset:
    build: Callable[..., list]  # (image_size, **params) -> list of train-time v2 transforms
    defaults: dict

    def check_params(self, params: dict) -> None:
        unknown = sorted(set(params) - set(self.defaults) - {"eval_crop"})
        if unknown:
            valid = ", ".join(sorted(set(self.defaults) | {"eval_crop"}))
            raise ValueError(f"aug: unknown parameter(s) {', '.join(unknown)}; valid: {valid}")
        for key, value in params.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"aug.{key}: must be a number >= 0, got {value!r}")
        crop = params.get("eval_crop", 1.0)
        if not 0 < crop <= 1:
            raise ValueError(f"aug.eval_crop: must be in (0, 1], got {crop!r}")
        scale = params.get("min_scale", 0.5)
        if not 0 < scale <= 1:
            raise ValueError(f"aug.min_scale: must be in (0, 1], got {scale!r}")


AUGMENTATIONS: Registry[AugmentationPreset] = Registry("augmentation preset")


def _none(image_size: int) -> list:
    return [v2.Resize((image_size, image_size), antialias=True)]


def _light(image_size: int, *, pad_fraction: float) -> list:
    # Random crop after padding (the CIFAR recipe) + horizontal flip.
    pad = int(round(image_size * pad_fraction))
    return [
        v2.Resize((image_size, image_size), antialias=True),
        v2.RandomCrop(image_size, padding=pad, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
    ]


def _journal(
    image_size: int, *, rotation: float, min_scale: float, jitter: float, grayscale: float
) -> list:
    return [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomRotation(rotation),
        v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
        v2.RandomGrayscale(p=grayscale),
    ]


AUGMENTATIONS.register("none")(AugmentationPreset(_none, {}))
AUGMENTATIONS.register("light")(AugmentationPreset(_light, {"pad_fraction": 0.125}))
AUGMENTATIONS.register("journal")(
    AugmentationPreset(
        _journal, {"rotation": 10.0, "min_scale": 0.5, "jitter": 0.2, "grayscale": 0.1}
    )
)


def _finish(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_train_transform(preset: str, image_size: int, mean, std, params: dict | None = None):
    """Train-time pipeline: PIL/uint8 tensor image -> normalised float tensor."""
    entry = AUGMENTATIONS.get(preset)
    chosen = {**entry.defaults, **{k: v for k, v in (params or {}).items() if k != "eval_crop"}}
    return v2.Compose([v2.ToImage(), *entry.build(image_size, **chosen), *_finish(mean, std)])


def build_eval_transform(image_size: int, mean, std, eval_crop: float = 1.0):
    """Eval pipeline: resize so the centre crop of ``eval_crop`` of the side is ``image_size``."""
    resize = max(image_size, int(round(image_size / eval_crop)))
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((resize, resize), antialias=True),
            v2.CenterCrop(image_size),
            *_finish(mean, std),
        ]
    )
