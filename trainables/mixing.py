"""MixUp / CutMix on a training batch (torchvision.transforms.v2), reproducible from (seed, epoch, step).

``mix_prob`` of the batches are mixed; with both alphas > 0 each mixed batch gets MixUp or CutMix,
50/50 (timm's switch). Targets come back as class probabilities (one-hot for an unmixed batch), and
the engine measures ``train_acc`` against each sample's DOMINANT label, the class with the largest
share of its mixed target (a MixUp of 70% cat and 30% dog counts as "cat").

Every draw (mix or not, which mixer, Beta's lambda, CutMix's box) happens inside a forked CPU
generator seeded from (seed, epoch, step): a batch mixes the same way whether or not the trial was
resumed, and however many loader workers there are, and the global generator is left untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from trainables.batch_finish import batch_seed


class BatchMixer:
    def __init__(self, *, num_classes: int, mixup_alpha: float, cutmix_alpha: float, mix_prob: float,
                 seed: int) -> None:
        self.mixers = []
        if mixup_alpha > 0:
            self.mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            self.mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not self.mixers:
            raise ValueError("BatchMixer needs mixup_alpha or cutmix_alpha > 0")
        self.num_classes, self.mix_prob, self.seed = num_classes, mix_prob, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int):
        """(images, labels [B]) -> (mixed images, target probabilities [B, classes])."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(self.seed, self.epoch, step))
            if float(torch.rand(())) >= self.mix_prob:
                return images, F.one_hot(labels, self.num_classes).to(images.dtype)
            mixer = self.mixers[int(torch.randint(len(self.mixers), ()))]
            return mixer(images, labels)


def dominant_label(targets: torch.Tensor) -> torch.Tensor:
    """The class with the largest share of each (mixed) target."""
    return targets.argmax(dim=1)
