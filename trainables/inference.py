"""A trained classifier rebuilt from its checkpoint alone: model, class names and eval preprocessing.

Everything needed travels inside the checkpoint (config, class_to_idx, normalisation), so a promoted
model predicts without the search, the YAML or the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainables.checkpoint import CheckpointError, load_checkpoint
from trainables.config import TrialConfig
from trainables.models import build_model
from trainables.transforms import build_eval_transform


@dataclass
class Classifier:
    model: nn.Module
    class_names: list[str]  # index -> the training folder's name (for the competition: label id)
    transform: Callable
    config: TrialConfig

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, *, tta: str = "none") -> torch.Tensor:
        """Softmax over classes, averaged over the test-time augmentations (none | flips | crops)."""
        views = [images]
        if tta in ("flips", "crops"):
            views.append(torch.flip(images, dims=[3]))
        if tta == "crops":
            views.extend(_shifted_crops(images))
        return torch.stack([self.model(v).float().softmax(dim=1) for v in views]).mean(dim=0)


def _shifted_crops(images: torch.Tensor) -> list[torch.Tensor]:
    """Four corner-shifted views (pad by 1/8 of the side, crop back), a cheap five-crop."""
    side = images.shape[-1]
    pad = max(1, side // 8)
    padded = nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad)]
    return [padded[..., y : y + side, x : x + side] for y, x in offsets]


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
        eval_crop = float(config.aug.get("eval_crop", 1.0))
        transform = build_eval_transform(config.image_size, norm["mean"], norm["std"], eval_crop)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        # A safe file that is not a complete tuner checkpoint: one clear line, not a traceback.
        raise CheckpointError(
            f"{checkpoint}: not a usable model checkpoint ({type(err).__name__}: {err})"
        ) from None
    model.to(device).eval()
    return Classifier(model, names, transform, config)
