"""Datasets and loaders: ImageFolder trees whose bad images are skipped and counted, never fatal.

Competition data is scraped from the web: truncated files, HTML saved as .jpg, CMYK, 16-bit PNGs,
EXIF-rotated phone photos and decompression bombs all occur. Each image is either decoded into an RGB
picture the right way up, or skipped; the skip is counted in the epoch's metrics and warned once.

Loaders are built once per trial (workers persist across epochs). The order of an epoch and the
augmentation of every image are pure functions of (seed, epoch, index): ``EpochSampler`` hands each
index its own seed, ``SeededItems`` seeds torch's generator with it before the transform runs. So an
epoch is the same with 0 or 8 workers, and the same whether or not the trial was resumed before it.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate
from torchvision.datasets import ImageFolder
from trainables.errors import TrialInputError
from trainables.image_files import IMAGE_EXTENSIONS, is_image_file
from trainables.image_formats import decode_formats
from trainables.cache import CachedImageDataset, CacheError, find_cache

log = logging.getLogger(__name__)

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class DataError(TrialInputError):
    """The data folder breaks a rule (missing, empty class, mismatched classes); names the path."""


def load_rgb_image(path: str | Path) -> Image.Image:
    """Decodes any Pillow-readable file into an upright RGB image; raises on anything unreadable.

    Decompression bombs raise: Pillow's size guard stays on and its warning (above ~89 megapixels) is
    promoted to an error, so one giant PNG cannot exhaust a worker's memory. Only the web photo
    formats of ``DECODE_FORMATS`` are parsed: an EPS/PSD/ICO named ``.jpg`` raises
    ``UnidentifiedImageError`` (a counted skip) instead of reaching a rarely used decoder.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path, formats=decode_formats()) as img:
            img.load()  # decode now, inside the guard: a truncated file raises here
            try:
                img = ImageOps.exif_transpose(img)  # phone photos: pixels stored sideways + a tag
            except Exception:  # a corrupt EXIF block costs the rotation, not the image
                pass
            if img.mode in _WIDE_MODES:
                img = _wide_to_8bit(img)
            if img.mode in ("P", "PA", "LA", "La") or "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "RGBa"):  # composite on white: transparent areas are not black
                img = img.convert("RGBA")
                background = Image.new("RGB", img.size, (255, 255, 255))
                background.paste(img, mask=img.getchannel("A"))
                return background
            return img.convert("RGB")


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images to 8 bits by their type's range (65535, 255 or 1.0), not by clipping."""
    array = np.asarray(img, dtype=np.float64)
    top = array.max(initial=0.0)
    if img.mode.startswith("I;16"):
        full_scale = 65535.0
    elif img.mode == "I":  # Pillow's 32-bit container: 16-bit data unless every value fits 8 bits
        full_scale = 65535.0 if top > 255 else 255.0
    else:  # "F": 0..1 floats, or 0..255 when larger
        full_scale = 1.0 if top <= 1.0 else 255.0
    scaled = np.clip(np.rint(array / full_scale * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")  # 2-D uint8 -> mode L


class RobustImageFolder(ImageFolder):
    """ImageFolder whose items are ``None`` for an image that cannot be decoded.

    The collate function drops the ``None`` and counts it, so one bad file costs one sample, not an
    epoch. Each bad file is warned once per process (a worker process warns for the files it meets).
    ``class_to_idx`` is sorted by folder name, as torchvision does.
    """

    def __init__(self, root: str | Path, transform: Optional[Callable] = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: data folder does not exist")
        try:
            super().__init__(str(root), transform=transform, loader=load_rgb_image,
                             is_valid_file=is_image_file, allow_empty=True)
        except FileNotFoundError as err:
            raise DataError(f"{root}: {err}") from None
        if not self.classes:
            raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        empty = [c for c in self.classes if counts[self.class_to_idx[c]] == 0]
        if empty:
            raise DataError(
                f"{root}: class folder(s) {', '.join(empty)} hold no image "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        self._warned: set[str] = set()

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:  # any decode failure is a skip, warned once per file
            if path not in self._warned:
                self._warned.add(path)
                reason = str(err).splitlines()[0] if str(err) else ""
                log.warning("skipping unreadable image %s (%s: %s)", path, type(err).__name__, reason)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.samples]


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)``; order and seeds depend only on (seed, epoch).

    ``set_epoch`` before each pass (like DistributedSampler). ``limit`` keeps the first N of the
    epoch's order (``max_steps_per_epoch`` x batch size). With ``shuffle=False`` the order is 0..n-1
    and no seed is handed out (evaluation is deterministic anyway).
    """

    def __init__(self, size: int, *, seed: int, shuffle: bool, limit: Optional[int] = None) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.limit = size if limit is None else min(limit, size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[tuple[int, Optional[int]]]:
        if not self.shuffle:
            return ((i, None) for i in range(self.limit))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[: self.limit].tolist()
        seeds = torch.randint(0, 2**62, (self.limit,), generator=generator).tolist()
        return iter(zip(order, seeds))


class SeededItems(Dataset):
    """``dataset[(index, seed)]`` -> ``(dataset[index], index)``, transformed under ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, Optional[int]]):
        index, seed = key
        if seed is not None:
            # Only the CPU generator: v2 transforms draw from it; CUDA's generators stay untouched.
            torch.default_generator.manual_seed(seed)
        return self.dataset[index], index


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor  # dataset index of every kept sample (the gallery finds its file by it)
    skipped: int  # samples of this batch that could not be decoded


def collate_skipping_bad(batch: Sequence[tuple[Optional[tuple], int]]) -> Batch:
    """Stacks the good samples of ``[(item or None, index), ...]`` and counts the bad ones."""
    good = [(item, index) for item, index in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0), empty, empty.clone(), skipped)
    # torch's default_collate stacks into shared memory when it runs in a loader worker: the batch
    # then crosses to the trainer without the extra copy a plain torch.stack would cost it.
    images = default_collate([item[0] for item, _ in good])
    labels = torch.tensor([item[1] for item, _ in good], dtype=torch.long)
    indices = torch.tensor([index for _, index in good], dtype=torch.long)
    return Batch(images, labels, indices, skipped)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    class_to_idx: dict[str, int]
    full_train_size: int  # images in the training folder (before train_subset)
    train_paths: list[str] = field(default_factory=list)  # files of ``train``, by its index
    val_paths: list[str] = field(default_factory=list)  # files of ``val``, by its index
    caches: dict[str, str] = field(default_factory=dict)  # split -> cache manifest read instead of files


def build_splits(
    train_dir: str,
    val_dir: str,
    *,
    train_transform,
    eval_transform,
    subset: Optional[int],
    seed: int,
    cache_size: Optional[int] = None,
    cached_train_transform=None,
) -> Splits:
    """Train and validation datasets; with ``cache_size``, an up-to-date decoded-image cache of at
    least that side (``tuner data cache``) is read instead of the files, split by split.
    ``cached_train_transform``: the train split's transform when it reads the cache (whose images
    are all one square size), instead of ``train_transform``."""
    caches: dict[str, str] = {}
    train = _open_split(train_dir, train_transform, cache_size, caches, "train", cached_train_transform)
    val = _open_split(val_dir, eval_transform, cache_size, caches, "val")
    if val.class_to_idx != train.class_to_idx:
        differing = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"{val_dir}: classes differ from {train_dir}: {', '.join(differing)}")
    full = len(train)
    chosen: Dataset = train
    train_paths = [path for path, _ in train.samples]
    if subset is not None:
        if subset > full:
            raise DataError(f"train_subset: {subset} is larger than the {full} images of {train_dir}")
        # A FIXED subset for the whole trial (seeded), reshuffled each epoch by the sampler.
        order = torch.randperm(full, generator=torch.Generator().manual_seed(seed))[:subset].tolist()
        chosen = Subset(train, order)
        train_paths = [train_paths[i] for i in order]
    val_paths = [path for path, _ in val.samples]
    return Splits(chosen, val, dict(train.class_to_idx), full, train_paths, val_paths, caches)


def class_counts(dataset: Dataset, num_classes: int) -> list[int]:
    """Images per class index of a split as a trial sees it: a seeded ``Subset`` counts only its
    own images. Read from the labels the folder listing (or cache manifest) already holds, never by
    decoding an image; a file that later turns out unreadable is still counted (it is rare, and
    the count is the class frequency the trial was given, which is what a prior shift needs)."""
    indices = None
    if isinstance(dataset, Subset):
        indices, dataset = dataset.indices, dataset.dataset
    targets = np.asarray(dataset.targets, dtype=np.int64)  # RobustImageFolder and the cache alike
    if indices is not None:
        targets = targets[np.asarray(indices, dtype=np.int64)]
    return [int(n) for n in np.bincount(targets, minlength=num_classes)]


def _open_split(folder: str, transform, cache_size: Optional[int], caches: dict, name: str,
                cached_transform=None) -> Dataset:
    if cache_size is not None:
        try:
            manifest = find_cache(folder, cache_size)
            if manifest is not None:
                dataset = CachedImageDataset(manifest, transform=cached_transform or transform)
                caches[name] = str(manifest)
                log.info("%s: reading decoded images from %s", folder, manifest)
                return dataset
        except (CacheError, OSError) as err:  # a damaged cache costs speed, not the trial
            log.warning("%s: not using its cache (%s); decoding the image files", folder, err)
    return RobustImageFolder(folder, transform=transform)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    pin_memory: bool,
    limit: Optional[int] = None,
) -> DataLoader:
    """A loader built once per trial; call ``loader.sampler.set_epoch(epoch)`` before each pass.

    Batches are ``Batch(images, labels, indices, skipped)``. Workers persist across epochs.
    """
    return DataLoader(
        SeededItems(dataset),
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed=seed, shuffle=shuffle, limit=limit),
        num_workers=num_workers,
        collate_fn=collate_skipping_bad,
        generator=torch.Generator().manual_seed(seed),  # worker base seeds: never the global RNG
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


def estimate_channel_stats(
    paths: Sequence[str], *, image_size: int, seed: int, limit: int = 256
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std (0..1 scale) of a seeded sample of ``limit`` images at ``image_size``.

    The fallback when the dataset has no stats.json (``tuner data stats`` writes one from all images).
    """
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(limit, len(paths)), replace=False)
    sums, squares, pixels = np.zeros(3), np.zeros(3), 0
    for i in sorted(chosen.tolist()):
        try:
            image = load_rgb_image(paths[i])
        except Exception:
            continue
        image.thumbnail((image_size, image_size))
        array = np.asarray(image, dtype=np.float64).reshape(-1, 3) / 255.0
        sums += array.sum(axis=0)
        squares += (array**2).sum(axis=0)
        pixels += len(array)
    if pixels == 0:
        raise DataError(f"{Path(paths[0]).parent.parent}: no readable image to compute mean/std from")
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 1e-12))
    return mean.tolist(), std.tolist()
