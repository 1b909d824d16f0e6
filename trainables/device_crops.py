"""The cheap presets' crops and resizes on the whole batch, on the GPU, from draws made per sample.

On a GPU machine the loader's workers set the pace of an ``rrc`` or ``journal`` trial: each image's
RandomResizedCrop (a crop, then an antialiased resize to the trial's size) costs about 0.6 ms of a
worker's CPU, while the GPU waits (on an H200, the engine trained resnet18 at 11,000 img/s from
pinned batches, bench/results/gpu_check.json, and at 6,200 from its loader,
bench/results/gpu_followup.json). When the training split is read from the decoded-image cache,
every image is the same square, so a batch can be stacked before it is cropped:

* in the workers, ``DeferredResizedCrop`` makes RandomResizedCrop's and RandomHorizontalFlip's draws
  for each sample, in their order, from the generator the loader seeds per sample, and hands over
  the cached image untouched with its box and flip (``CropPlan``);
* on the device, ``crop_on_device`` crops and resizes the whole batch with
  ``torchvision.ops.roi_align`` (bilinear at torchvision's half-pixel centres, averaging 2 x 2 or
  more samples per output pixel where the crop is larger than the output, as antialiasing does),
  then flips the samples drawn for it.

The boxes and flips are those the per-sample pipeline draws for the same seeds; the pixels differ
from torchvision's ``resized_crop`` by about 0.25 grey levels on average on real photos (p99 2;
``bench/loader_ceiling.py`` measures it), and are not rounded to whole grey levels.

``light`` and ``none`` squash the whole image to the trial's size and then (``light``) take a window
of it, reflect-padded, and flip it. Their workers pay for the antialiased resize the same way, so
they defer too: ``DeferredWindow`` makes the window's and the flip's draws (-> the window's corner
in the resized image, which may lie in the padding), and ``window_on_device`` resizes the batch
(``F.interpolate``, antialiased, as torchvision's resize) and gathers every window, its reflected
edges and its flip with one index. Only the resize's rounding to whole grey levels differs from the
per-sample pipeline.

A trial crops this way only on CUDA, with the train split cached, and with a preset that registers
its ``DeviceCrops`` (``rrc``, ``journal``, ``light``, ``none``): a CPU is faster at it per sample.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

TOP, LEFT, HEIGHT, WIDTH, FLIP = range(5)  # the columns of CropPlan.boxes


class CropPlan(NamedTuple):
    """Cached images, uncropped, and what to do with each: one sample, or a batch once collated."""

    pixels: torch.Tensor  # uint8 [(B,) 3, S, S]
    boxes: torch.Tensor  # float32 [(B,) 5]: top, left, height, width, flip (1.0) or not (0.0)

    def to(self, device, non_blocking: bool = False) -> "CropPlan":
        return CropPlan(self.pixels.to(device, non_blocking=non_blocking),
                        self.boxes.to(device, non_blocking=non_blocking))

    def contiguous(self, memory_format: Optional[torch.memory_format] = None) -> "CropPlan":
        return self  # the crops are new tensors: BatchFinish lays them out (engine._to_device asks)

    @property
    def device(self) -> torch.device:
        return self.pixels.device


class DeferredResizedCrop(torch.nn.Module):
    """``v2.RandomResizedCrop(size, scale, antialias=True)`` + ``v2.RandomHorizontalFlip()``'s draws
    for one image, without their pixel work: -> ``CropPlan(image, box)``."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        super().__init__()
        self.size = size
        self.crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)

    def forward(self, image: torch.Tensor) -> CropPlan:
        params = self.crop.make_params([image])  # RandomResizedCrop's draws, as its forward makes them
        flip = torch.rand(1) < 0.5  # RandomHorizontalFlip flips when its draw is below p = 0.5
        box = torch.tensor([params["top"], params["left"], params["height"], params["width"], float(flip)],
                           dtype=torch.float32)
        return CropPlan(image.as_subclass(torch.Tensor), box)


def crop_on_device(plan: CropPlan, size: int) -> torch.Tensor:
    """A collated ``CropPlan`` -> float32 [B, 3, size, size] in 0..255: each sample's box resized
    to ``size`` (roi_align), flipped where drawn, on the plan's device."""
    boxes = plan.boxes.to(torch.float32)
    sample = torch.arange(len(boxes), device=boxes.device, dtype=torch.float32)
    # roi_align's boxes are (sample, x1, y1, x2, y2) in pixel edges; aligned=True samples at
    # half-pixel centres, where torchvision's bilinear resize samples.
    rois = torch.stack([sample, boxes[:, LEFT], boxes[:, TOP], boxes[:, LEFT] + boxes[:, WIDTH],
                        boxes[:, TOP] + boxes[:, HEIGHT]], dim=1)
    crops = roi_align(plan.pixels.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
    flip = (boxes[:, FLIP] > 0.5)[:, None, None, None]
    return torch.where(flip, crops.flip(-1), crops)


class DeferredWindow(torch.nn.Module):
    """A squash to ``size`` x ``size`` (``v2.Resize``, antialiased), then ``window``'s draws (a
    ``v2.RandomCrop`` of ``size``, reflect-padded; None: the whole image) and, with ``flip``, a
    RandomHorizontalFlip's, without their pixel work: -> ``CropPlan(image, box)``, the box's top and
    left in the resized image's coordinates (negative, or beyond it, inside the padding)."""

    def __init__(self, size: int, window: Optional[v2.RandomCrop] = None, flip: bool = False) -> None:
        super().__init__()
        if window is not None and (window.padding_mode != "reflect" or tuple(window.size) != (size, size)):
            raise ValueError(f"DeferredWindow: a reflect-padded {size} x {size} window only, got "
                             f"{tuple(window.size)} padded by {window.padding_mode!r}")
        self.size, self.window, self.flip = size, window, flip
        # What the window's draws read of the resized image: its size (the pixels are never touched).
        self._resized_shape = torch.empty((), dtype=torch.uint8).expand(3, size, size)

    def forward(self, image: torch.Tensor) -> CropPlan:
        top = left = 0
        if self.window is not None:  # RandomCrop's draws, as its forward makes them after the resize
            params = self.window.make_params([self._resized_shape])
            pad_left, pad_top = params["padding"][:2]
            top, left = params["top"] - pad_top, params["left"] - pad_left
        flip = bool(torch.rand(1) < 0.5) if self.flip else False  # RandomHorizontalFlip's draw
        box = torch.tensor([top, left, self.size, self.size, float(flip)], dtype=torch.float32)
        return CropPlan(image.as_subclass(torch.Tensor), box)


def window_on_device(plan: CropPlan, size: int) -> torch.Tensor:
    """A collated ``CropPlan`` of ``DeferredWindow``s -> float32 [B, 3, size, size] in 0..255: the
    batch resized to ``size`` (antialiased bilinear), each sample's window taken with its edges
    reflected as ``F.pad(mode="reflect")`` does, flipped where drawn, on the plan's device."""
    pixels = plan.pixels.float()
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    boxes = plan.boxes.to(torch.long)
    offsets = torch.arange(size, device=pixels.device)
    rows = _reflect(boxes[:, TOP, None] + offsets, size)  # [B, size]
    cols = _reflect(boxes[:, LEFT, None] + offsets, size)
    cols = torch.where(boxes[:, FLIP, None] > 0, cols.flip(1), cols)  # a flip reads the columns backwards
    sample = torch.arange(len(boxes), device=pixels.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: [B, size, size, 3], which is the
    # channels_last layout of [B, 3, size, size], the one the model takes on a GPU.
    return pixels[sample, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions of a reflect-padded axis (-size < index < 2 size - 1) -> positions in the axis."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


class DeviceCrops(NamedTuple):
    """How a preset leaves its per-sample crops to the device: the workers' draws and the batch op."""

    defer: Callable[..., torch.nn.Module]  # (image_size, **preset params) -> image -> CropPlan
    crop: Callable[[CropPlan, int], torch.Tensor]  # (collated plan, image_size) -> float 0..255 batch
