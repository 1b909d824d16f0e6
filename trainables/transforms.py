"""Augmentation presets on torchvision.transforms.v2, each with parameters a search may vary.

The journal ablated augmentations by hand and wondered whether grayscale and centre crops hurt; here
each preset is a registered name whose parameters (rotation degrees, minimum crop scale, jitter
strength, grayscale probability, eval centre-crop fraction) are ordinary searchable keys under ``aug``
(``aug.rotation: {choice: [0, 10, 20]}`` in a search space). The modern recipes' presets are
torchvision's own: ``rrc`` (RandomResizedCrop + flip, the standard ImageNet recipe), and
``trivialaugment``, ``randaugment`` (``aug.num_ops``, ``aug.magnitude``) and ``autoaugment``
(ImageNet policy) on top of it. ``aug.erasing`` (RandomErasing's probability, on the normalised
tensor) and ``aug.eval_crop`` apply to every preset.

Every preset works on the decoded-image cache's uint8 tensors exactly as on PIL images: the pipeline
starts with ``ToImage`` (PIL -> uint8 tensor, a cached tensor passes through), so the same ops run on
the same uint8 pixels either way. A preset's ops that come after its crops and flips and cost more
per sample than they would per batch (``journal``'s rotation, colour jitter and grayscale) are its
``tail``: ``BatchFinish`` runs them on the whole batch, on the device (batch_tail.py).

The per-sample ops draw from torch's global generator, which the data loader seeds per sample from
(seed, epoch, index); the tail draws from BatchFinish's generator of (seed, epoch, step): an image's
augmentation does not depend on workers, on resuming, or on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from trainables.batch_tail import BatchTail
from trainables.device_crops import (DeferredResizedCrop, DeferredWindow, DeviceCrops, crop_on_device,
                                     window_on_device)
from trainables.registry import Registry

EVAL_CROP = "eval_crop"  # every preset takes it: fraction of the resized side kept by the centre crop
ERASING = "erasing"  # every preset takes it: probability of RandomErasing on the normalised image
COMMON = {EVAL_CROP: 1.0, ERASING: 0.0}  # parameters of every preset, with their defaults
_UPPER_BOUNDS = {"grayscale": 1.0, "min_scale": 1.0, EVAL_CROP: 1.0, "pad_fraction": 0.5,
                 "rotation": 180.0, ERASING: 1.0, "magnitude": 30.0, "num_ops": 16.0}
_WHOLE = {"num_ops", "magnitude"}  # RandAugment's op count and magnitude bin


@dataclass(frozen=True)
class AugmentationPreset:
    build: Callable[..., list]  # (image_size, **params) -> list of train-time v2 transforms
    defaults: dict
    # (**params) -> the ops that run on the whole batch after the per-sample ones (batch_tail.py)
    tail: Optional[Callable[..., BatchTail]] = None
    # Its per-sample ops are crops, resizes and flips only: on a GPU, with the train split cached,
    # the workers make their draws and the pixel work runs on the whole batch there (device_crops.py).
    device_crops: Optional[DeviceCrops] = None

    def check_params(self, params: dict) -> None:
        valid = set(self.defaults) | set(COMMON)
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ValueError(f"aug: unknown parameter(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(valid))}")
        for key, value in params.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"aug.{key}: must be a number >= 0, got {value!r}")
            if key in _WHOLE and value != int(value):
                raise ValueError(f"aug.{key}: must be a whole number, got {value!r}")
            upper = _UPPER_BOUNDS.get(key)
            if upper is not None and value > upper:
                raise ValueError(f"aug.{key}: must be <= {upper:g}, got {value!r}")
        for key in (EVAL_CROP, "min_scale"):
            if key in params and params[key] <= 0:
                raise ValueError(f"aug.{key}: must be in (0, 1], got {params[key]!r}")


AUGMENTATIONS: Registry[AugmentationPreset] = Registry("augmentation preset")


def _squash(side: int):
    # The whole picture, aspect ratio ignored: nothing of a product photo is cut away, and it is the
    # geometry of the decoded-image cache's default fit ("squash"), so cache and files agree.
    return v2.Resize((side, side), antialias=True)


def _none(image_size: int) -> list:
    return [_squash(image_size)]


class CropThenPad(v2.RandomCrop):
    """``v2.RandomCrop`` with padding: the same draws and the same pixels, cropped before it pads.

    RandomCrop pads the whole image, then crops: at 224 px with 12.5 % reflect padding it builds a
    280 x 280 image (in float: torchvision pads uint8 by reflection after a conversion) to keep a
    224 x 224 window. Here the window's part inside the image is cut out first and only its missing
    rows and columns are added, mirrored from the uint8 pixels. Where a window reaches past an edge,
    its inside part touches that edge, so mirroring it gives what padding the whole image gives.
    Constant padding, PIL images, and padding wider than the part inside take RandomCrop's own way.
    """

    def transform(self, inpt, params: dict):
        if (not params["needs_pad"] or self.padding_mode not in _MIRROR_SKIPS
                or not isinstance(inpt, torch.Tensor) or inpt.ndim < 3):
            return super().transform(inpt, params)
        height, width = inpt.shape[-2:]
        pad_left, pad_top, _, _ = params["padding"]
        top, left = params["top"] - pad_top, params["left"] - pad_left  # the window, image coordinates
        bottom, right = top + params["height"], left + params["width"]
        inside = inpt.as_subclass(torch.Tensor)[..., max(0, top):min(height, bottom),
                                                max(0, left):min(width, right)]
        missing = {-2: (max(0, -top), max(0, bottom - height)), -1: (max(0, -left), max(0, right - width))}
        skip = _MIRROR_SKIPS[self.padding_mode]
        if any(max(amounts) > inside.shape[dim] - skip for dim, amounts in missing.items()):
            return super().transform(inpt, params)
        window = inside
        for dim, (before, after) in missing.items():
            window = _mirror(window, before, after, dim, self.padding_mode)
        return tv_tensors.wrap(window, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else window


# Edge pixels a mirrored pad leaves out: reflect maps -1 to 1, symmetric maps -1 to 0.
_MIRROR_SKIPS = {"reflect": 1, "symmetric": 0}


def _mirror(piece: torch.Tensor, before: int, after: int, dim: int, mode: str) -> torch.Tensor:
    """``piece`` with ``before`` / ``after`` pixels added along ``dim`` as ``F.pad``'s ``mode`` does."""
    if not before and not after:
        return piece
    size, skip = piece.shape[dim], _MIRROR_SKIPS[mode]
    parts = [piece.narrow(dim, skip, before).flip(dim)] if before else []
    parts.append(piece)
    if after:
        parts.append(piece.narrow(dim, size - skip - after, after).flip(dim))
    return torch.cat(parts, dim)


def _light(image_size: int, *, pad_fraction: float) -> list:
    # The CIFAR recipe: random crop after reflect-padding by pad_fraction of the side, + h-flip.
    return [_squash(image_size), _light_window(image_size, pad_fraction), v2.RandomHorizontalFlip()]


def _light_window(image_size: int, pad_fraction: float) -> CropThenPad:
    return CropThenPad(image_size, padding=int(round(image_size * pad_fraction)), padding_mode="reflect")


def _light_deferred(image_size: int, *, pad_fraction: float) -> DeferredWindow:
    return DeferredWindow(image_size, _light_window(image_size, pad_fraction), flip=True)


def _none_deferred(image_size: int) -> DeferredWindow:
    return DeferredWindow(image_size)


def _rrc_deferred(image_size: int, *, min_scale: float, **batch_params) -> DeferredResizedCrop:
    return DeferredResizedCrop(image_size, scale=(float(min_scale), 1.0))


def _journal(image_size: int, *, min_scale: float, **batch_params) -> list:
    # The journal's recipe: zoom (crop area >= min_scale of the image) and flip per sample; then
    # rotation (degrees), colour jitter (brightness/contrast/saturation +- jitter) and grayscale
    # with probability p, which run on the whole batch (_journal_tail, batch_tail.py).
    return [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip()]


def _journal_tail(*, rotation: float, jitter: float, grayscale: float, **sample_params) -> BatchTail:
    return BatchTail(rotation=float(rotation), jitter=float(jitter), grayscale=float(grayscale))


def _rrc(image_size: int, *, min_scale: float) -> list:
    # torchvision's classification recipe: a random crop of min_scale..100% of the area, any aspect
    # ratio in [3/4, 4/3], resized to the square; then a horizontal flip.
    return [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip()]


def _trivialaugment(image_size: int, *, min_scale: float) -> list:
    # TrivialAugment (Mueller & Hutter 2021): one random op at a random strength per image; no knobs.
    return [*_rrc(image_size, min_scale=min_scale), v2.TrivialAugmentWide()]


def _randaugment(image_size: int, *, min_scale: float, num_ops: float, magnitude: float) -> list:
    # RandAugment (Cubuk et al. 2020): num_ops random ops, each at strength magnitude (bins 0..30).
    return [*_rrc(image_size, min_scale=min_scale),
            v2.RandAugment(num_ops=int(num_ops), magnitude=int(magnitude))]


def _autoaugment(image_size: int, *, min_scale: float) -> list:
    # AutoAugment's learned ImageNet policy.
    return [*_rrc(image_size, min_scale=min_scale), v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]


# 0.25, not torchvision's 0.08: at 32 px a crop of 8% of the area keeps ~9x9 pixels.
_RRC_DEFAULTS = {"min_scale": 0.25}

_SQUASHED_ON_DEVICE = DeviceCrops(_none_deferred, window_on_device)
_WINDOW_ON_DEVICE = DeviceCrops(_light_deferred, window_on_device)
_CROPPED_ON_DEVICE = DeviceCrops(_rrc_deferred, crop_on_device)

AUGMENTATIONS.register("none")(AugmentationPreset(_none, {}, device_crops=_SQUASHED_ON_DEVICE))
AUGMENTATIONS.register("light")(
    AugmentationPreset(_light, {"pad_fraction": 0.125}, device_crops=_WINDOW_ON_DEVICE)
)
AUGMENTATIONS.register("journal")(
    AugmentationPreset(
        _journal, {"rotation": 10.0, "min_scale": 0.5, "jitter": 0.2, "grayscale": 0.1}, tail=_journal_tail,
        device_crops=_CROPPED_ON_DEVICE,
    )
)


AUGMENTATIONS.register("rrc")(AugmentationPreset(_rrc, dict(_RRC_DEFAULTS), device_crops=_CROPPED_ON_DEVICE))
AUGMENTATIONS.register("trivialaugment")(AugmentationPreset(_trivialaugment, dict(_RRC_DEFAULTS)))
AUGMENTATIONS.register("randaugment")(
    AugmentationPreset(_randaugment, {**_RRC_DEFAULTS, "num_ops": 2, "magnitude": 9})
)
AUGMENTATIONS.register("autoaugment")(AugmentationPreset(_autoaugment, dict(_RRC_DEFAULTS)))


def _finish(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def erasing_probability(params: dict | None) -> float:
    return float((params or {}).get(ERASING, COMMON[ERASING]))


def _chosen(entry: AugmentationPreset, params: dict | None) -> dict:
    return {**entry.defaults, **{k: v for k, v in (params or {}).items() if k not in COMMON}}


def build_train_pixels(preset: str, image_size: int, params: dict | None = None, *,
                       crops_on_device: bool = False):
    """What a trial's loader workers run per sample: PIL image or uint8 tensor -> uint8 tensor
    [3, image_size, image_size], the preset's crops, flips and colour ops. The preset's batch ops
    (``build_batch_tail``), conversion, normalisation and erasing are left to ``BatchFinish``, once
    per batch on the device (batch_finish.py). ``crops_on_device`` (presets that allow it, images of
    one square size): only the crop's and flip's draws, -> ``CropPlan`` (device_crops.py)."""
    entry = AUGMENTATIONS.get(preset)
    chosen = _chosen(entry, params)
    if crops_on_device:
        if entry.device_crops is None:
            raise ValueError(f"augmentation {preset}: its per-sample ops cannot move to the device")
        return v2.Compose([v2.ToImage(), entry.device_crops.defer(image_size, **chosen)])
    return v2.Compose([v2.ToImage(), *entry.build(image_size, **chosen)])


def crops_can_move_to_device(preset: str) -> bool:
    return AUGMENTATIONS.get(preset).device_crops is not None


def device_crop_op(preset: str) -> Callable:
    """The batch op that does the pixel work a preset's ``crops_on_device`` workers left:
    (collated CropPlan, image_size) -> float 0..255 batch (device_crops.py)."""
    entry = AUGMENTATIONS.get(preset)
    if entry.device_crops is None:
        raise ValueError(f"augmentation {preset}: its per-sample ops cannot move to the device")
    return entry.device_crops.crop


def build_batch_tail(preset: str, params: dict | None = None) -> Optional[BatchTail]:
    """The preset's ops that ``BatchFinish`` runs on the whole batch; None if it has none."""
    entry = AUGMENTATIONS.get(preset)
    tail = entry.tail(**_chosen(entry, params)) if entry.tail is not None else None
    return tail if tail is not None and tail.active else None


class _SampleTail(torch.nn.Module):
    """A batch tail on one float image, its draws seeded from torch's global generator (which the
    loader seeds per sample): previews and one-off pipelines get the ops a trial's batches get."""

    def __init__(self, tail: BatchTail) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        return self.tail(image.unsqueeze(0), generator)[0]


def build_eval_pixels(image_size: int, eval_crop: float = 1.0):
    """Eval geometry on uint8: squash to ``image_size / eval_crop`` square, keep the centre ``image_size``."""
    resize = max(image_size, int(round(image_size / eval_crop)))
    return v2.Compose([v2.ToImage(), _squash(resize), v2.CenterCrop(image_size)])


def build_train_transform(preset: str, image_size: int, mean, std, params: dict | None = None):
    """Train-time pipeline per sample: PIL image -> normalised float tensor [3, image_size, image_size]
    (previews, one-off use; a trial's loader runs build_train_pixels and finishes batches instead)."""
    # value=0 after Normalize: the erased box takes the dataset's mean colour.
    erasing = erasing_probability(params)
    erase = [v2.RandomErasing(p=erasing, value=0)] if erasing > 0 else []
    batch_tail = build_batch_tail(preset, params)
    convert, normalise = _finish(mean, std)
    return v2.Compose([build_train_pixels(preset, image_size, params), convert,
                       *([_SampleTail(batch_tail)] if batch_tail is not None else []), normalise, *erase])


def build_eval_transform(image_size: int, mean, std, eval_crop: float = 1.0):
    """Eval pipeline per sample: squash, centre crop, normalised float (inference, TTA views)."""
    return v2.Compose([build_eval_pixels(image_size, eval_crop), *_finish(mean, std)])
