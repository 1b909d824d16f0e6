"""The last step of the data path, on the device: uint8 batches -> normalised float, + random erasing.

The loader's workers hand over uint8 batches (crops, flips, policy ops run per sample on uint8
there): a quarter of float32's bytes through the workers' IPC and the host-to-device copy, and no
per-sample float conversion on the CPU. Here, on the device the model runs on, a whole batch is
cropped (where the workers left a preset's crops and resizes to a GPU: device_crops.py), put
through the preset's batch ops (``journal``'s rotation on the uint8 pixels, then colour jitter and
grayscale on floats: batch_tail.py) or just converted, normalised, then erased (torchvision's RandomErasing, value 0 = the dataset's mean
colour after normalising, the same parameters: area 2-33 %, aspect 0.3-3.3, 10 tries to fit, per
sample).

The batch ops' and erasing's draws come from CPU generators seeded from (seed, epoch, step), one
stream each, then move to the device: a batch is treated the same way on CPU and GPU, resumed or
not, whatever the number of workers, and the global generators are left alone.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from trainables.batch_tail import BatchTail
from trainables.device_crops import CropPlan

ERASE_SCALE = (0.02, 0.33)  # torchvision's RandomErasing defaults
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10
TAIL_STREAM = 1  # the preset's batch ops draw from their own stream: erasing's draws stay as they were


class BatchFinish:
    """uint8 [B, 3, H, W] (any device) -> float32, ``(x / 255 - mean) / std``, erased with
    probability ``erasing`` per sample. A float batch passes through: it is finished already."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, erasing: float = 0.0,
                 seed: int = 0, tail: Optional[BatchTail] = None, crop_size: Optional[int] = None,
                 crop_op: Optional[Callable[[CropPlan, int], torch.Tensor]] = None) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.erasing, self.seed, self.epoch = float(erasing), int(seed), 0
        self.tail = tail if tail is not None and tail.active else None
        self.crop_size = crop_size  # the side a CropPlan's boxes are resized to (device_crops.py)
        # The preset's batch op (transforms.device_crop_op): roi_align crops (rrc, journal) or windows
        # (light, none). No default: a plan's boxes mean different things to each.
        self.crop_op = crop_op
        self._constants: dict = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, images: torch.Tensor | CropPlan, step: int = 0) -> torch.Tensor:
        if isinstance(images, CropPlan):  # the workers left the crops to the device: float 0..255
            if self.crop_size is None or self.crop_op is None:
                raise TypeError("a CropPlan batch reached a BatchFinish without crop_size and crop_op")
            images = self.crop_op(images, self.crop_size)
        elif images.is_floating_point():
            return images
        scale, shift = self._on(images.device)
        # (x / 255 - mean) / std as x * scale + shift: two passes over the batch instead of four,
        # within 1e-6 of ToDtype(scale=True) + Normalize; to(float) keeps channels_last.
        if self.tail is not None:  # the preset's batch ops: uint8 or 0..1 in (rotation moves pixels), 0..1 out
            pixels = images if not images.is_floating_point() else images.mul_(1.0 / 255.0)
            finished = self.tail(pixels, self._generator(step, TAIL_STREAM))
            scale = scale * 255.0
        else:
            finished = images.to(torch.float32)
        finished = finished.mul_(scale).add_(shift)
        if finished.is_cuda:  # what the model takes; the crops and the rotation's gather lay out NCHW
            finished = finished.contiguous(memory_format=torch.channels_last)
        if self.erasing > 0:
            finished.masked_fill_(self.erase_mask(finished.shape, step, finished.device)[:, None], 0.0)
        return finished

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel on ``device``: 1 / (255 std) and -mean / std."""
        if device not in self._constants:
            mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (self.mean, self.std))
            self._constants[device] = tuple(t.to(device=device, dtype=torch.float32)
                                            for t in (1.0 / (255.0 * std), -mean / std))
        return self._constants[device]

    def erase_mask(self, shape: Sequence[int], step: int,
                   device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """[B, H, W] bool on ``device``: the box erased in each sample of batch ``step`` (all False
        where none). The boxes are drawn on the CPU (5 numbers a sample); the mask is built where
        the batch is, so no image-sized tensor crosses to the device."""
        height, width = shape[-2], shape[-1]
        top, left, box_h, box_w, apply = (t.to(device) for t in self._boxes(shape[0], height, width, step))
        rows = torch.arange(height, device=device)[None, :]
        cols = torch.arange(width, device=device)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
        return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]

    def tail_draws(self, batch: int, step: int) -> dict:
        """The batch ops' random numbers for batch ``step`` of this epoch ({} without batch ops)."""
        return self.tail.draw(batch, self._generator(step, TAIL_STREAM)) if self.tail is not None else {}

    def _generator(self, step: int, stream: int = 0) -> torch.Generator:
        """A CPU generator of batch ``step`` of this epoch: one stream for erasing, one for the tail."""
        key = batch_seed(self.seed, self.epoch, step)
        return torch.Generator().manual_seed((key + stream * 0x9E3779B97F4A7C15) % 2**64)

    def _boxes(self, batch: int, height: int, width: int, step: int):
        generator = self._generator(step)
        apply = torch.rand(batch, generator=generator) < self.erasing
        area = height * width * _uniform((batch, ERASE_TRIES), ERASE_SCALE, generator)
        log_ratio = _uniform((batch, ERASE_TRIES), (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])),
                             generator)
        ratio = log_ratio.exp()
        box_h = (area * ratio).sqrt().round().long()
        box_w = (area / ratio).sqrt().round().long()
        fits = (box_h < height) & (box_w < width)
        pick = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits, as torchvision takes it
        box_h, box_w = box_h.gather(1, pick)[:, 0], box_w.gather(1, pick)[:, 0]
        apply &= fits.any(dim=1)
        top = (torch.rand(batch, generator=generator) * (height - box_h + 1)).long()
        left = (torch.rand(batch, generator=generator) * (width - box_w + 1)).long()
        return top, left, box_h, box_w, apply


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of batch ``step`` of ``epoch``: what every per-batch draw (erasing, the preset's batch
    ops, MixUp/CutMix) derives from, so that none depends on the device, the workers or a resume."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + step


def _uniform(shape: tuple, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator)


def finish_or_pass(finish: Optional[BatchFinish], images: torch.Tensor, step: int) -> torch.Tensor:
    """The engine's step: a uint8 batch without a finisher is a wiring error, not a silent 0-255 input."""
    if finish is not None:
        return finish(images, step)
    if not images.is_floating_point():
        raise TypeError("a uint8 batch reached the model: pass the loader's BatchFinish as `finish`")
    return images
