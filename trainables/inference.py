"""A trained classifier rebuilt from its checkpoint alone: model, class names and eval preprocessing.

Everything needed travels inside the checkpoint (config, class_to_idx, normalisation), so a promoted
model predicts without the search, the YAML or the training data. Test-time augmentation averages
the softmax over the views that ``trainables.tta`` names, cut from base images that
``Classifier.view_transform`` makes with the checkpoint's own preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from trainables.checkpoint import CheckpointError, load_checkpoint
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.transforms import build_eval_transform
from trainables.tta import get_tta


@dataclass
class Classifier:
    model: nn.Module
    class_names: list[str]  # index -> the training folder's name (for the competition: label id)
    transform: Callable  # PIL image -> the model's input: the base images of tta none/flips/crops
    config: TrialConfig
    # The checkpoint's eval preprocessing, kept to build the larger base images some TTAs cut from.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_crop: float = 1.0
    # Training images per class index (prior-shift calibration); None for checkpoints from before
    # they were recorded.
    class_counts: Optional[list[int]] = None

    def view_transform(self, tta: str) -> Callable:
        """PIL image -> the base tensor that ``probabilities(..., tta=tta)`` cuts its views from: the
        eval transform at ``round(image_size * base_scale)`` px, same normalisation and eval_crop.
        For a base_scale 1 set it is ``self.transform`` itself. Build it once, apply it per image."""
        side = get_tta(tta).base_side(self.config.image_size)
        if side == self.config.image_size:
            return self.transform
        return build_eval_transform(side, self.mean, self.std, self.eval_crop)

    @torch.no_grad()
    def probabilities(self, base_batch: torch.Tensor, *, tta: str = "none",
                      chunk: int = 512) -> torch.Tensor:
        """Softmax over classes [B, classes] (float32), averaged over the views of ``tta``
        (``trainables.tta``). ``base_batch`` holds ``view_transform(tta)`` outputs; views of one size
        share forward passes of at most ``chunk`` images, so memory does not grow with the views."""
        views_of = get_tta(tta)
        if chunk < 1:
            raise ValueError(f"chunk: must be >= 1, got {chunk}")
        side = views_of.base_side(self.config.image_size)
        if tuple(base_batch.shape[-2:]) != (side, side):
            # Crops of a base no larger than the model's input would all be the same image, silently.
            raise ValueError(f"tta {tta!r}: base images must be {side} px squares "
                             f"(view_transform({tta!r})), got {tuple(base_batch.shape[-2:])}")
        views = views_of.views(base_batch, self.config.image_size)
        if len(base_batch) == 0:  # nothing to average; the model still gives the [0, classes] shape
            return self.model(views[0]).float().softmax(dim=1)
        per_view: dict[int, torch.Tensor] = {}
        for indices in _same_size_groups(views):
            batches = _chunks([views[i] for i in indices], chunk)
            probs = torch.cat([self.model(batch).float().softmax(dim=1) for batch in batches])
            per_view.update(zip(indices, probs.split(len(base_batch))))
        return torch.stack([per_view[index] for index in range(len(views))]).mean(dim=0)


def _same_size_groups(views: list[torch.Tensor]) -> list[list[int]]:
    """Indices of the views, grouped by input size (first appearance first): one group, one batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(tuple(view.shape[1:]), []).append(index)
    return list(groups.values())


def _chunks(views: list[torch.Tensor], chunk: int) -> Iterator[torch.Tensor]:
    """The views' images one after the other, ``chunk`` at a time, without first concatenating them
    all (that copy would hold every view of the batch at once)."""
    per_view = len(views[0])
    total = per_view * len(views)
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        pieces = [views[v][max(start - v * per_view, 0) : end - v * per_view]
                  for v in range(start // per_view, (end - 1) // per_view + 1)]
        yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def load_classifier(checkpoint: str | Path, device: str | torch.device = "cpu") -> Classifier:
    content = load_checkpoint(checkpoint, map_location=device)
    try:
        config = TrialConfig.from_dict(content["config"])
        class_to_idx: dict[str, int] = content["class_to_idx"]
        model = build_model(
            config.arch,
            num_classes=len(class_to_idx),
            image_size=config.image_size,
            width=config.width,
            growth_rate=config.growth_rate,
        )  # no pretrained: the checkpoint holds every weight
        # The weight average when the trial kept one (ema_decay > 0): its val_acc is what was reported.
        model.load_state_dict((content.get("ema") or {}).get("model") or content["model"])
        names = [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
        norm = content["normalisation"]
        mean = tuple(float(value) for value in norm["mean"])
        std = tuple(float(value) for value in norm["std"])
        eval_crop = float(config.aug.get("eval_crop", 1.0))
        transform = build_eval_transform(config.image_size, mean, std, eval_crop)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        # A safe file that is not a complete tuner checkpoint: one clear line, not a traceback.
        raise CheckpointError(
            f"{checkpoint}: not a usable model checkpoint ({type(err).__name__}: {err})"
        ) from None
    model.to(device).eval()
    return Classifier(model, names, transform, config, mean=mean, std=std, eval_crop=eval_crop,
                      class_counts=content.get("class_counts"))
