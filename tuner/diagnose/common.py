"""What the diagnostics share: reading CONFIG, a fixed seeded subset, small in-memory datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from tuner.errors import UserError
from tuner.spec.model import SearchSpec
from tuner.spec.trial_file import config_from_file, spec_if_any
from trainables.config import TrialConfig


def load_config(path: str | Path, overrides: Optional[dict] = None) -> TrialConfig:
    """CONFIG is a trial-config YAML or a search spec (its fixed values, first/middle of the space)."""
    return config_from_file(path, overrides)


def load_spec_if_any(path: str | Path, overrides: Optional[dict] = None) -> Optional[SearchSpec]:
    """The search spec in ``path``, or None when the file is a plain trial config."""
    return spec_if_any(path, overrides)


def subset_indices(total: int, count: int, *, seed: int, flag: str, where: str) -> list[int]:
    """A fixed, seeded choice of ``count`` of ``total`` items (the same one on every run)."""
    if count < 1:
        raise UserError(f"{flag}: must be >= 1, got {count}")
    if count > total:
        raise UserError(f"{flag}: {count} is larger than the {total} images of {where}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return order[:count].tolist()


class TensorImages(Dataset):
    """Decoded, transformed images held in memory: ``(image, label)`` items for ``make_loader``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def decode(dataset: Dataset, indices: list[int]) -> TensorImages:
    """Runs ``dataset``'s loading and transform once per index; unreadable images are left out."""
    items = [dataset[i] for i in indices]
    good = [item for item in items if item is not None]
    if not good:
        raise UserError("none of the chosen images could be read")
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return TensorImages(images, labels)
