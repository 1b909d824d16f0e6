"""train_one_epoch / evaluate: plain PyTorch, bf16 autocast + channels_last on CUDA, nothing on CPU.

Losses are summed over samples and divided by the sample count at the end, so ``val_loss`` is the mean
over the WHOLE validation set, not a mean of batch means (a short last batch would otherwise count as
much as a full one). Running sums stay on the device: a ``.item()`` per step would make the CPU wait
for the GPU at every batch. The one exception is the divergence check, which reads the PREVIOUS
step's loss, so the GPU is always one step ahead when the CPU waits.

Batches arrive uint8 from the loader and are finished on the device (``finish``: conversion,
normalisation, random erasing; batch_finish.py) after a copy a quarter of float's size.

A training step is the modern recipe's: an optional MixUp/CutMix of the batch (``mix``; train accuracy
then counts the dominant label), cross-entropy with ``label_smoothing``, an optional clip of the
gradients' global norm (``grad_clip_norm``), the optimizer step, then ``after_step`` (the per-batch
schedule and the weight average). ``val_loss`` is always the plain cross-entropy, unsmoothed.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.batch_finish import BatchFinish, finish_or_pass
from trainables.mixing import dominant_label


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
    seconds: float
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
    if device.type != "cuda":
        return images.to(device), labels.to(device)
    # Pinned host memory + non_blocking: the copy overlaps the previous step's kernels.
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _check_finite(loss: Optional[torch.Tensor], step: int) -> None:
    if loss is not None and not math.isfinite(loss.item()):
        raise Diverged(f"training loss is {loss.item()} at step {step}")


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    max_steps: Optional[int] = None,
    frozen: Sequence[nn.Module] = (),
    progress: Optional[Callable[[int], None]] = None,
    label_smoothing: float = 0.0,
    mix: Optional[Callable] = None,
    grad_clip_norm: Optional[float] = None,
    after_step: Optional[Callable[[], None]] = None,
    finish: Optional[BatchFinish] = None,
) -> TrainStats:
    """One pass over ``loader`` (batches ``(images, labels, indices, skipped)``; uint8 ones need
    ``finish``, the ``BatchFinish`` that normalises and erases them on the device).

    Raises ``Diverged`` at the first non-finite loss (checked one step late, see the module doc).
    ``frozen`` modules stay in eval mode: a frozen backbone's BatchNorm statistics must not move.
    ``mix(images, labels, step)`` returns mixed images and target probabilities (``BatchMixer``).
    """
    clipped = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    for module in frozen:
        module.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = skipped = 0
    previous: Optional[torch.Tensor] = None
    start = time.perf_counter()
    for step, (images, labels, _, bad) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        skipped += bad
        if labels.numel() == 0:
            continue
        images, targets, labels = _training_inputs(images, labels, step, device, finish, mix)
        with autocast_for(device):
            logits = model(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        _backward(optimizer, loss, clipped, grad_clip_norm)
        _check_finite(previous, step - 1)
        optimizer.step()
        if after_step is not None:
            after_step()
        previous = loss.detach()
        loss_sum += previous.double() * labels.numel()
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += labels.numel()
        if progress is not None:
            progress(labels.numel())
    _check_finite(previous, seen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise Diverged(f"mean training loss is {mean_loss}")
    return TrainStats(mean_loss, correct.item() / max(seen, 1), seen, seconds, skipped)


def _training_inputs(images, labels, step: int, device: torch.device, finish: Optional[BatchFinish],
                     mix: Optional[Callable]):
    """The batch on the device, finished and mixed: (images, targets, the labels accuracy counts)."""
    images, labels = _to_device(images, labels, device)
    images = finish_or_pass(finish, images, step)
    if mix is None:
        return images, labels, labels
    images, targets = mix(images, labels, step)
    return images, targets, dominant_label(targets)


def _backward(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clipped: list,
              grad_clip_norm: Optional[float]) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(clipped, grad_clip_norm)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    num_classes: int,
    keep_mistakes: int = 0,
    finish: Optional[BatchFinish] = None,
) -> EvalStats:
    """Loss (mean over all samples), top-1, top-5 and the confusion matrix over ``loader``.

    ``mistakes`` holds the first ``keep_mistakes`` misclassified samples as (dataset index, true,
    predicted); indices come from the batches, so skipped images do not shift them.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    seen = skipped = 0
    mistakes: list = []
    k = min(5, num_classes)
    start = time.perf_counter()
    for step, (images, labels, indices, bad) in enumerate(loader):
        skipped += bad
        if labels.numel() == 0:
            continue
        images, labels = _to_device(images, labels, device)
        images = finish_or_pass(finish, images, step)
        with autocast_for(device):
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        predicted = logits.argmax(dim=1)
        top1 += (predicted == labels).sum()
        top5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum()
        # index_add_, not bincount: bincount sizes its output from the data, a GPU->CPU sync.
        confusion.index_add_(0, labels * num_classes + predicted, torch.ones_like(labels))
        if len(mistakes) < keep_mistakes:
            wrong = (predicted != labels).nonzero().flatten().cpu().tolist()
            truth, guess = labels.cpu(), predicted.cpu()
            for i in wrong[: keep_mistakes - len(mistakes)]:
                mistakes.append((int(indices[i]), int(truth[i]), int(guess[i])))
        seen += labels.numel()
    total = max(seen, 1)
    return EvalStats(
        loss=loss_sum.item() / total,
        accuracy=top1.item() / total,
        top5=top5.item() / total,
        images=seen,
        skipped=skipped,
        seconds=time.perf_counter() - start,
        confusion=confusion.view(num_classes, num_classes).cpu(),
        mistakes=mistakes,
    )
