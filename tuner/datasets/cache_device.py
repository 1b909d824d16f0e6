"""``tuner data cache --decode-device cuda``: one chunk of rows decoded as a batch on a device.

The chunk's JPEGs go through ``trainables.gpu_decode.decode_jpegs`` (nvjpeg on CUDA; reduced as
Pillow's ``draft`` would, made upright), are fitted to ``S x S`` on the device with torchvision's
antialiased bilinear resize (Pillow's BILINEAR, within one grey level) and the same geometry as
``cache_decode.FIT_FUNCTIONS``, then copied into the memory-mapped file in one device-to-host copy.
Every other row (PNG, WebP, CMYK, unreadable...) goes through the CPU path's own ``decode_row`` in
this process, so the manifest records the same sizes and the same errors as a CPU build.

Runs in the builder's process (one device, batches of files), never in the spawned CPU workers.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from trainables.gpu_decode import DeviceImage, decode_jpegs
from tuner.datasets.cache_decode import Record, decode_row

__all__ = ["decode_rows_on_device", "fit_on_device"]


def decode_rows_on_device(pixels_path: str, rows: list[tuple[int, str]], size: int, fit: str,
                          device: torch.device) -> list[Record]:
    """``cache_decode.decode_rows``'s contract, decoding the chunk's JPEGs on ``device``."""
    decoded = decode_jpegs([path for _, path in rows], device, draft_size=size)
    fitted = _fitted_on_host(decoded, size, fit)
    pixels = np.load(pixels_path, mmap_mode="r+")
    try:
        records = [_record(pixels, row, path, image, fitted.get(i), size, fit)
                   for i, ((row, path), image) in enumerate(zip(rows, decoded))]
        pixels.flush()  # msync before the rows are recorded as done
    finally:
        del pixels
    return records


def _fitted_on_host(decoded: list[Optional[DeviceImage]], size: int, fit: str) -> dict[int, np.ndarray]:
    """{index: uint8 [3, size, size]} of the decoded images, stacked on the device, copied once."""
    indices = [i for i, image in enumerate(decoded) if image is not None]
    if not indices:
        return {}
    batch = torch.stack([fit_on_device(decoded[i].pixels, size, fit) for i in indices]).cpu().numpy()
    return dict(zip(indices, batch))


def _record(pixels: np.ndarray, row: int, path: str, image: Optional[DeviceImage],
            chw: Optional[np.ndarray], size: int, fit: str) -> Record:
    if image is None:  # not a JPEG the device decodes: the CPU path, in this process
        return decode_row(pixels, row, path, size, fit)
    pixels[row] = chw
    return [row, True, image.width, image.height, None]


def fit_on_device(image: torch.Tensor, size: int, fit: str) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size] with ``FIT_FUNCTIONS[fit]``'s geometry (Pillow's
    ``resize``, ``ImageOps.fit`` and ``ImageOps.pad``, whose size arithmetic is repeated here)."""
    height, width = image.shape[-2:]
    if fit == "squash":
        return TF.resize(image, [size, size], antialias=True)
    if fit == "crop":
        return _centre_square(image, size)
    if fit == "pad":
        # ImageOps.contain: the longer side to size, the other rounded; then centred on black.
        new_w = size if width >= height else round(width / height * size)
        new_h = size if height >= width else round(height / width * size)
        left, top = round((size - new_w) * 0.5), round((size - new_h) * 0.5)
        resized = TF.resize(image, [new_h, new_w], antialias=True)
        return TF.pad(resized, [left, top, size - new_w - left, size - new_h - top], fill=0)
    raise ValueError(f"fit must be squash, crop or pad, got {fit!r}")


def _centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """ImageOps.fit's centred largest square, resized. Pillow resamples from a fractional box when
    the sides differ by an odd number (offset k + 0.5); torchvision crops whole pixels, so the two
    crops at k and k + 1 are resized and averaged (resizing is linear: this is the half-pixel shift
    to first order, a third of the error of either crop alone)."""
    height, width = image.shape[-2:]
    side = min(height, width)
    tops = {(height - side) // 2, (height - side + 1) // 2}
    lefts = {(width - side) // 2, (width - side + 1) // 2}
    if len(tops) == len(lefts) == 1:
        return TF.resized_crop(image, tops.pop(), lefts.pop(), side, side, [size, size], antialias=True)
    crops = [TF.resized_crop(image.float(), top, left, side, side, [size, size], antialias=True)
             for top in tops for left in lefts]
    return torch.stack(crops).mean(dim=0).round_().clamp_(0, 255).to(torch.uint8)
