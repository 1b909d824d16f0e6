"""train_one_epoch / evaluate: plain PyTorch, bf16 autocast + channels_last on CUDA, nothing on CPU.

Losses are summed over samples and divided by the sample count at the end, so ``val_loss`` is the mean
over the WHOLE validation set, not a mean of batch means (a short last batch would otherwise count as
much as a full one).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the trial ends as ``diverged``, the search goes on."""


@dataclass
class TrainStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    skipped: int

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalStats:
    loss: float
    accuracy: float
    top5: float
    images: int
    skipped: int
    confusion: torch.Tensor  # [true, predicted] counts
    mistakes: list = field(default_factory=list)  # (dataset index, true, predicted), first N

    def per_class_accuracy(self) -> torch.Tensor:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return self.confusion.diag().double() / totals


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    non_blocking = device.type == "cuda"
    images = images.to(device, non_blocking=non_blocking)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=non_blocking)


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    max_steps: Optional[int] = None,
    progress=None,
) -> TrainStats:
    """One pass over ``loader``; raises ``Diverged`` at the first non-finite loss."""
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = skipped = 0
    start = time.perf_counter()
    for step, (images, labels, bad) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        skipped += bad
        if labels.numel() == 0:
            continue
        images, labels = _to_device(images, labels, device)
        with autocast_for(device):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise Diverged(f"training loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: a .item() per step would synchronise CUDA every batch.
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += labels.numel()
        if progress is not None:
            progress(labels.numel())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise Diverged(f"mean training loss is {mean_loss}")
    return TrainStats(mean_loss, correct.item() / max(seen, 1), seen, seconds, skipped)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    num_classes: int,
    keep_mistakes: int = 0,
) -> EvalStats:
    """Loss (mean over all samples), top-1, top-5 and the confusion matrix over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    seen = skipped = 0
    mistakes: list = []
    k = min(5, num_classes)
    for images, labels, bad in loader:
        skipped += bad
        if labels.numel() == 0:
            continue
        images, labels = _to_device(images, labels, device)
        with autocast_for(device):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted = logits.argmax(dim=1)
        top1 += (predicted == labels).sum()
        top5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum()
        confusion += torch.bincount(
            labels * num_classes + predicted, minlength=num_classes * num_classes
        ).view(num_classes, num_classes)
        if len(mistakes) < keep_mistakes:
            wrong = (predicted != labels).nonzero().flatten().tolist()
            for i in wrong[: keep_mistakes - len(mistakes)]:
                mistakes.append((seen + i, int(labels[i]), int(predicted[i])))
        seen += labels.numel()
    total = max(seen, 1)
    return EvalStats(
        loss=loss_sum.item() / total,
        accuracy=top1.item() / total,
        top5=top5.item() / total,
        images=seen,
        skipped=skipped,
        confusion=confusion.cpu(),
        mistakes=mistakes,
    )
