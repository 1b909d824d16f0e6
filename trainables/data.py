"""Datasets and loaders: ImageFolder trees whose bad images are skipped and counted, never fatal.

Competition data is scraped from the web: truncated files, HTML saved as .jpg, CMYK, 16-bit PNGs,
EXIF-rotated phone photos and decompression bombs all occur. Each image is either decoded into an RGB
picture the right way up, or skipped; the skip is counted in the epoch's metrics and warned once.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data folder breaks a rule (missing, empty class, mismatched classes); names the path."""


def load_rgb_image(path: str | Path) -> Image.Image:
    """Decodes any Pillow-readable file into an upright RGB image; raises on anything unreadable.

    Decompression bombs raise (Pillow's guard stays on, and its warning is promoted to an error so a
    100-megapixel PNG cannot exhaust a worker's memory).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                img = _wide_to_8bit(img)
            if img.mode in ("P", "PA", "LA") or "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode == "RGBA":  # composite on white so transparent areas do not become black
                background = Image.new("RGB", img.size, (255, 255, 255))
                background.paste(img, mask=img.getchannel("A"))
                return background
            return img.convert("RGB")


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images: scale to 0..255 by their own type's range, not by clipping."""
    array = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I") and array.max(initial=0) > 255 else max(array.max(initial=1), 1)
    return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")


class RobustImageFolder(ImageFolder):
    """ImageFolder whose items are ``None`` for an image that cannot be decoded.

    The collate function drops the ``None`` and counts it, so one bad file costs one sample, not an
    epoch. ``class_to_idx`` is sorted by folder name, as torchvision does.
    """

    def __init__(self, root: str | Path, transform: Optional[Callable] = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: data folder does not exist")
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb_image,
                             allow_empty=True)
        except FileNotFoundError as err:
            raise DataError(f"{root}: {err}") from None
        empty = [c for c in self.classes if self.targets.count(self.class_to_idx[c]) == 0]
        if empty:
            raise DataError(
                f"{root}: class folder(s) {', '.join(empty)} hold no image "
                f"(extensions {', '.join(IMG_EXTENSIONS)})"
            )
        if not self.classes:
            raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:  # any decode failure is a skip, reported once per file
            log.warning("skipping unreadable image %s (%s: %s)", path, type(err).__name__, err)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def collate_skipping_bad(batch: list):
    """Stacks the good samples and returns how many were skipped: ``(images, labels, skipped)``."""
    good = [item for item in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, skipped


@dataclass
class Splits:
    train: Dataset
    val: RobustImageFolder
    class_to_idx: dict[str, int]
    full_train_size: int


def build_splits(
    train_dir: str, val_dir: str, *, train_transform, eval_transform, subset: Optional[int], seed: int
) -> Splits:
    train = RobustImageFolder(train_dir, transform=train_transform)
    val = RobustImageFolder(val_dir, transform=eval_transform)
    if val.class_to_idx != train.class_to_idx:
        missing = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"{val_dir}: classes differ from {train_dir}: {', '.join(missing)}")
    full = len(train)
    chosen: Dataset = train
    if subset is not None:
        if subset > full:
            raise DataError(f"train_subset: {subset} is larger than the {full} images of {train_dir}")
        # A FIXED subset for the whole trial (seeded), reshuffled each epoch by the loader.
        order = torch.randperm(full, generator=torch.Generator().manual_seed(seed))
        chosen = Subset(train, order[:subset].tolist())
    return Splits(chosen, val, dict(train.class_to_idx), full)


def make_loader(
    dataset: Dataset, *, batch_size: int, shuffle: bool, num_workers: int, seed: int, pin_memory: bool
) -> DataLoader:
    """A loader whose shuffle order depends only on ``seed`` (set per epoch for exact resume)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_skipping_bad,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        persistent_workers=False,
        drop_last=False,
    )
