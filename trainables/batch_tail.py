"""The journal preset's last ops (rotation, colour jitter, grayscale) on a whole batch at once.

Per sample on the CPU, rotation and colour jitter were four fifths of the ``journal`` preset's cost
(about 1.2 ms each at 224 px on one core: torchvision converts uint8 to float for each of them). They
come last in the preset, after the crop and the flip, so they can move to the batch without changing
the order of anything: ``BatchFinish`` runs them on the float batch (0..1) before normalising, on
the device the model runs on. Each sample still gets its own draws, as torchvision gives them:

* rotation: an angle uniform in [-rotation, rotation] degrees, counter-clockwise about the centre,
  nearest neighbour, corners filled with black (``v2.RandomRotation``'s defaults);
* jitter: brightness, contrast and saturation factors, each uniform in [1 - jitter, 1 + jitter] per
  sample, applied in a random order (``v2.ColorJitter``'s float arithmetic: contrast blends with the
  mean grey level of the image, saturation with its per-pixel grey). One order per batch, where
  ColorJitter draws one per sample: a batch then costs three passes instead of nine, and over an
  epoch the orders are as mixed as before;
* grayscale: with probability p, the ITU-R 601 grey in all three channels (``v2.RandomGrayscale``).

The draws come from a CPU generator the caller seeds from (seed, epoch, step), so a batch gets the
same ones on CPU and GPU, resumed or not, whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
BRIGHTNESS, CONTRAST, SATURATION = range(3)


@dataclass(frozen=True)
class BatchTail:
    rotation: float = 0.0  # degrees
    jitter: float = 0.0  # brightness / contrast / saturation strength
    grayscale: float = 0.0  # probability per sample

    @property
    def active(self) -> bool:
        return self.rotation > 0 or self.jitter > 0 or self.grayscale > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """float [B, 3, H, W] in 0..1 -> the same, each sample rotated, jittered and greyed by its draws."""
        batch = images.shape[0]
        draws = self.draw(batch, generator)
        if self.rotation > 0:
            images = rotate(images, draws["angle"].to(images.device))
        if self.jitter > 0:
            images = jitter(images, draws["factors"].to(images.device), draws["order"].to(images.device))
        if self.grayscale > 0:
            grey = draws["grey"].to(images.device)[:, None, None, None]
            images = torch.where(grey, _grey(images).expand_as(images), images)
        return images

    def draw(self, batch: int, generator: torch.Generator) -> dict:
        """Every random number of a batch, drawn on the CPU in a fixed order."""
        angle = (torch.rand(batch, generator=generator) * 2 - 1) * self.rotation
        factors = 1 + (torch.rand(batch, 3, generator=generator) * 2 - 1) * self.jitter
        order = torch.randperm(3, generator=generator)
        grey = torch.rand(batch, generator=generator) < self.grayscale
        return {"angle": angle, "factors": factors, "order": order, "grey": grey}


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each sample turned counter-clockwise by its angle about its centre; nearest; black corners."""
    height, width = images.shape[-2:]
    radians = degrees.to(torch.float32) * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    # The output pixel's place in the input, in grid_sample's [-1, 1] coordinates (y downwards).
    theta = torch.stack([torch.stack([cos, -sin * (height / width), torch.zeros_like(cos)], dim=1),
                         torch.stack([sin * (width / height), cos, torch.zeros_like(cos)], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation with per-sample ``factors`` [B, 3], in the op ``order`` [3]."""
    factors = factors.to(images.dtype)[:, :, None, None, None]
    for op in order.tolist():
        ratio = factors[:, op]
        if op == BRIGHTNESS:  # a blend with black
            images = (images * ratio).clamp_(0, 1)
        else:
            other = _grey(images)
            if op == CONTRAST:
                other = other.mean(dim=(-3, -2, -1), keepdim=True)
            images = (images * ratio).add_(other * (1 - ratio)).clamp_(0, 1)
    return images


def _grey(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(dim=-3)
    return (GREY[0] * red + GREY[1] * green + GREY[2] * blue).unsqueeze(-3)
