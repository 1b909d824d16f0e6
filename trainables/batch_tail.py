"""The journal preset's last ops (rotation, colour jitter, grayscale) on a whole batch at once.

Per sample on the CPU, rotation and colour jitter were four fifths of the ``journal`` preset's cost
(about 1.2 ms each at 224 px on one core: torchvision converts uint8 to float for each of them). They
come last in the preset, after the crop and the flip, so they can move to the batch without changing
the order of anything: ``BatchFinish`` runs them on the whole batch before normalising, on the device
the model runs on. (On a CPU-only machine that is the trainer's process. Running them in the loader's
workers instead was measured and did not pay: a float batch costs the workers' IPC four times the
bytes of uint8, which on 2 cores took as much as the ops saved.) Each sample still gets its own
draws, as torchvision gives them:

* rotation: an angle uniform in [-rotation, rotation] degrees, counter-clockwise about the centre,
  nearest neighbour, corners filled with black (``v2.RandomRotation``'s defaults). Nearest neighbour
  only moves pixels, so it runs on the uint8 batch, before the conversion: each output pixel's source
  is computed with torchvision's own float32 arithmetic and gathered. ``F.affine_grid`` +
  ``grid_sample`` cost 3x as much on the CPU (the grid is a batched matrix product) and disagreed
  with torchvision on pixels whose source lies exactly half-way between two;
* jitter: brightness, contrast and saturation factors, each uniform in [1 - jitter, 1 + jitter] per
  sample, applied in a random order (``v2.ColorJitter``'s float arithmetic: contrast blends with the
  mean grey level of the image, saturation with its per-pixel grey), in place. One order per batch,
  where ColorJitter draws one per sample: a batch then costs three passes instead of nine, and over
  an epoch the orders are as mixed as before;
* grayscale: with probability p, the ITU-R 601 grey in all three channels (``v2.RandomGrayscale``),
  computed for the chosen samples only.

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
        """[B, 3, H, W], uint8 (0..255) or float (0..1) -> float 0..1, each sample rotated, jittered
        and greyed by its draws. A float input may be modified in place."""
        batch = images.shape[0]
        draws = self.draw(batch, generator)
        if self.rotation > 0:
            images = rotate(images, draws["angle"].to(images.device))
        if not images.is_floating_point():
            images = images.to(torch.float32).mul_(1.0 / 255.0)
        if self.jitter > 0:
            images = jitter(images, draws["factors"].to(images.device), draws["order"].to(images.device))
        if self.grayscale > 0:
            chosen = draws["grey"].nonzero().flatten().to(images.device)
            if len(chosen):
                images[chosen] = _grey(images[chosen]).expand(-1, images.shape[1], -1, -1)
        return images

    def draw(self, batch: int, generator: torch.Generator) -> dict:
        """Every random number of a batch, drawn on the CPU in a fixed order."""
        angle = (torch.rand(batch, generator=generator) * 2 - 1) * self.rotation
        factors = 1 + (torch.rand(batch, 3, generator=generator) * 2 - 1) * self.jitter
        order = torch.randperm(3, generator=generator)
        grey = torch.rand(batch, generator=generator) < self.grayscale
        return {"angle": angle, "factors": factors, "order": order, "grey": grey}


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each sample turned counter-clockwise by its angle about its centre; nearest; black corners.
    Any dtype: pixels are gathered, never recomputed."""
    batch, channels, height, width = images.shape
    x, y = _source_pixels(degrees, height, width, images.device)
    # In a one-pixel black frame around the image, every source outside it lands on the frame.
    framed = F.pad(images, (1, 1, 1, 1)).view(batch, channels, -1)
    x.clamp_(-1, width)
    y.clamp_(-1, height)
    source = torch.add(x, y, alpha=width + 2).add_(width + 3).long().view(batch, 1, -1)
    return framed.gather(2, source.expand(-1, channels, -1)).view(images.shape)


def _source_pixels(degrees: torch.Tensor, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) [B, H, W], float: the input pixel whose value each output pixel of a rotation takes,
    by torchvision's ``rotate`` arithmetic (``_get_inverse_affine_matrix`` in float64, then its
    ``_affine_grid`` and ``grid_sample``'s unnormalisation and rounding in float32), so that
    the two agree pixel for pixel; its grid is a product of rows and columns, computed as such."""
    radians = -(degrees.to(device=device, dtype=torch.float64) % 360) * (math.pi / 180)
    cos, sin = (v.to(torch.float32)[:, None, None] for v in (radians.cos(), radians.sin()))
    half_width = torch.tensor(0.5 * width, dtype=torch.float32, device=device)
    half_height = torch.tensor(0.5 * height, dtype=torch.float32, device=device)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)[None, None, :]
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)[None, :, None]
    grid_x = xs * (cos / half_width) + ys * (sin / half_width)  # in [-1, 1], as grid_sample reads it
    grid_y = xs * (-sin / half_height) + ys * (cos / half_height)
    x = grid_x.add_(1).mul_(width / 2).sub_(0.5).round_()  # nearest, ties to even, as grid_sample
    y = grid_y.add_(1).mul_(height / 2).sub_(0.5).round_()
    return x, y


def jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation with per-sample ``factors`` [B, 3], in the op ``order`` [3];
    float 0..1, in place."""
    factors = factors.to(images.dtype)[:, :, None, None, None]
    for op in order.tolist():
        ratio = factors[:, op]
        if op == BRIGHTNESS:  # a blend with black
            images.mul_(ratio)
        else:  # a blend with grey: the image's mean grey level (contrast) or each pixel's (saturation)
            other = _grey(images)
            if op == CONTRAST:
                other = other.mean(dim=(-3, -2, -1), keepdim=True)
            torch.addcmul(other.mul_(1 - ratio), images, ratio, out=images)  # one pass, not two
        images.clamp_(0, 1)
    return images


def _grey(images: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W]: torchvision's ``rgb_to_grayscale`` arithmetic."""
    red, green, blue = images.unbind(dim=-3)
    return red.mul(GREY[0]).add_(green, alpha=GREY[1]).add_(blue, alpha=GREY[2]).unsqueeze(-3)
