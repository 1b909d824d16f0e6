"""A promoted model as an ensemble: one or more trained classifiers whose softmaxes are combined.

A single promoted trial is an ensemble of one member (weight 1), so ``tuner predict`` and
``tuner evaluate`` have one code path. Every member keeps its own preprocessing (image size,
normalisation, eval crop): an image is decoded ONCE and each member cuts its own test-time views
from it (``trainables.tta``). Members' probabilities are first averaged over the views
(arithmetic), then combined across members:

* ``geometric`` (default): p(y|x) ∝ Π_m p_m(y|x)^w_m, the geometric mean the iMaterialist winners
  used; a member confident that a class is wrong vetoes it.
* ``arithmetic``: p(y|x) = Σ_m w_m p_m(y|x).

An optional prior-shift calibration (``tuner.lastmile.calibrate``) is applied last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from PIL import Image

from trainables.inference import Classifier
from tuner.errors import UserError
from tuner.lastmile.calibrate import Calibration, checkpoint_class_counts

COMBINE_RULES = ("geometric", "arithmetic")
_FLOOR = 1e-12  # log(0) guard for the geometric mean: a hard zero would veto a class for ever


@dataclass
class Member:
    classifier: Classifier
    weight: float = 1.0
    # Lineage, kept in the model card: where the member came from.
    trial: Optional[str] = None
    run_id: Optional[str] = None
    checkpoint: Optional[str] = None
    arch: Optional[str] = None


@dataclass
class Ensemble:
    members: list[Member]
    combine: str = "geometric"
    calibration: Optional[Calibration] = None
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            raise UserError("an ensemble needs at least one member")
        if self.combine not in COMBINE_RULES:
            raise UserError(f"--combine: must be one of {', '.join(COMBINE_RULES)}, got {self.combine!r}")
        self.class_names = self.class_names or list(self.members[0].classifier.class_names)
        check_same_classes(self.members)

    @property
    def weights(self) -> torch.Tensor:
        return torch.tensor([m.weight for m in self.members], dtype=torch.float64)

    def member_probabilities(self, images: list[Image.Image], tta: str = "none") -> torch.Tensor:
        """[members, images, classes]: each member's softmax, averaged over its views."""
        return torch.stack([member_probabilities(m.classifier, images, tta) for m in self.members])

    def probabilities(self, images: list[Image.Image], tta: str = "none", *,
                      calibrate: bool = True) -> torch.Tensor:
        combined = combine_probabilities(self.member_probabilities(images, tta), self.weights, self.combine)
        if calibrate and self.calibration is not None:
            combined = self.calibration.apply(combined)
        return combined


def member_probabilities(classifier: Classifier, images: list[Image.Image], tta: str) -> torch.Tensor:
    """One member's [images, classes] softmax on CPU: its own transform per decoded image, views
    batched through the model by ``Classifier.probabilities``."""
    device = next(classifier.model.parameters()).device
    transform = classifier.view_transform(tta)
    batch = torch.stack([transform(image) for image in images]).to(device, non_blocking=True)
    return classifier.probabilities(batch, tta=tta).float().cpu()


def combine_probabilities(member_probs: torch.Tensor, weights: torch.Tensor, rule: str) -> torch.Tensor:
    """[members, N, classes] and [members] weights -> [N, classes], rows summing to 1."""
    w = (weights / weights.sum()).to(torch.float64).view(-1, 1, 1)
    probs = member_probs.to(torch.float64)
    if rule == "geometric":
        log_mean = (w * probs.clamp_min(_FLOOR).log()).sum(dim=0)
        combined = torch.softmax(log_mean, dim=1)  # exp + renormalise, stably
    elif rule == "arithmetic":
        combined = (w * probs).sum(dim=0)
        combined = combined / combined.sum(dim=1, keepdim=True)
    else:
        raise UserError(f"--combine: must be one of {', '.join(COMBINE_RULES)}, got {rule!r}")
    return combined.float()


def check_same_classes(members: list[Member]) -> None:
    """Members must predict the same classes in the same order, or their softmaxes cannot be
    combined: one line naming the first member that differs and how."""
    first = members[0].classifier.class_names
    for member in members[1:]:
        names = member.classifier.class_names
        if names != first:
            missing = sorted(set(first) - set(names))[:5]
            extra = sorted(set(names) - set(first))[:5]
            detail = (f"missing {missing}, extra {extra}" if missing or extra
                      else "same classes in another order")
            raise UserError(f"ensemble member {member.trial or member.checkpoint}: its classes differ "
                            f"from {members[0].trial or members[0].checkpoint}'s ({detail})")


def calibration_for(members: list[Member], spec: str):
    """``--calibrate spec`` for these members: the source prior is the mean of their normalised
    training class counts (recorded in each checkpoint), the target what ``spec`` names."""
    names = members[0].classifier.class_names
    counts = [checkpoint_class_counts({"class_counts": m.classifier.class_counts,
                                       "class_to_idx": dict.fromkeys(names)}, m.trial or m.checkpoint)
              for m in members]
    return Calibration.from_counts(spec, names, counts)
