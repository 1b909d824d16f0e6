"""The decoded-image cache, reader side: find a cache beside an ImageFolder tree and read it.

Decoding a full-size JPEG costs milliseconds of CPU per image, every epoch, in every trial; a GPU
wants thousands of images per second. ``tuner data cache`` (``tuner.datasets.cache``) therefore
decodes every image ONCE, resizes it to ``S x S`` and stores the uint8 pixels of a whole split in one
memory-mapped ``.npy`` file. All trials (and all their DataLoader workers) on a node share the pages
of that file through the OS page cache; each sample costs a copy of ``3*S*S`` bytes, and the random
crops and flips then run on that small tensor (torchvision ``transforms.v2`` accept tensors).

Layout, beside the data (never inside an ImageFolder tree, where a folder would become a class)::

    DATA/train/<class>/<image>            the images (ImageFolder)
    DATA/.cache/train_<S>.npy             uint8 [N, 3, S, S] (NCHW), row i = sample i
    DATA/.cache/train_<S>.parquet         manifest: one row per sample + build metadata
    DATA/.cache/train_<S>.lock            held while building (tuner.datasets.cache)

Row ``i`` is the ``i``-th sample of torchvision's ``ImageFolder`` over the same folder (same order,
same ``class_to_idx`` = sorted folder names), so a seeded subset picks the same images either way.
An image that could not be decoded keeps its row (zeros) with ``ok = false``; the dataset returns
``None`` for it, as ``RobustImageFolder`` does, so the loader's collate skips and counts it.

This module is the contract shared with the builder; it imports neither ray nor tuner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import find_classes, make_dataset

from trainables.errors import TrialInputError
from trainables.image_files import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

CACHE_DIR = ".cache"  # beside the split folders: ImageFolder would take it for a class inside one
FORMAT_VERSION = 1
METADATA_KEY = b"tuner.cache"  # Parquet schema metadata key holding the build metadata (JSON)


class CacheError(TrialInputError):
    """A cache file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class CachePaths:
    """Where the cache of ``image_dir`` at size ``size`` lives (see the module docstring)."""

    image_dir: Path
    size: int

    @property
    def directory(self) -> Path:
        return self.image_dir.parent / CACHE_DIR

    @property
    def stem(self) -> str:
        return f"{self.image_dir.name}_{self.size}"

    @property
    def pixels(self) -> Path:
        return self.directory / f"{self.stem}.npy"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{self.stem}.parquet"

    @property
    def lock(self) -> Path:
        return self.directory / f"{self.stem}.lock"


def cache_paths(image_dir: str | os.PathLike, size: int) -> CachePaths:
    # abspath, not resolve(): the cache sits beside the folder as the user names it.
    return CachePaths(Path(os.path.abspath(image_dir)), int(size))


def list_samples(image_dir: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, class index)])`` exactly as torchvision's ImageFolder lists them."""
    classes, class_to_idx = find_classes(image_dir)
    samples = make_dataset(str(image_dir), class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    return classes, samples


def fingerprint(image_dir: str | os.PathLike, classes: list[str], samples: list[tuple[str, int]]) -> str:
    """A cheap identity of the image tree: the sample list plus the mtime (ns) of every class folder.

    Adding, removing or renaming an image changes the list; replacing one (the downloader writes a
    ``.part`` file and renames it) changes its folder's mtime. One stat per class, not per image,
    so checking a 192k-image tree stays well under a second. An image rewritten in place under the
    same name is NOT detected: rebuild with ``tuner data cache --force`` after doing that.
    """
    root = Path(image_dir)
    digest = hashlib.sha256()
    for name in [".", *classes]:
        digest.update(f"d {name} {os.stat(root / name).st_mtime_ns}\n".encode())
    for path, target in samples:
        digest.update(f"f {os.path.relpath(path, root)} {target}\n".encode())
    return digest.hexdigest()


def read_metadata(manifest: str | os.PathLike) -> dict:
    """The build metadata stored in a manifest's Parquet schema (sizes, classes, fingerprint, …)."""
    try:
        raw = (pq.read_schema(manifest).metadata or {}).get(METADATA_KEY)
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on junk
        raise CacheError(f"{manifest}: unreadable cache manifest ({err})") from None
    if raw is None:
        raise CacheError(f"{manifest}: not a tuner cache manifest (no {METADATA_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("version") != FORMAT_VERSION:
        raise CacheError(
            f"{manifest}: cache format version {meta.get('version')}, this code reads {FORMAT_VERSION}; "
            "rebuild it with `tuner data cache`"
        )
    return meta


def find_cache(image_dir: str, image_size: int) -> Optional[Path]:
    """The manifest of an up-to-date cache of ``image_dir`` usable at ``image_size``, else None.

    Prefers a cache of exactly ``image_size``; otherwise the smallest larger one (the trial's
    transforms resize it down). A smaller cache is never used (upscaling loses detail), nor one whose
    images changed since it was built (a warning says to rebuild it).
    """
    paths = cache_paths(image_dir, image_size)
    if not paths.directory.is_dir() or not paths.image_dir.is_dir():
        return None
    sizes = []
    for manifest in paths.directory.glob(f"{paths.image_dir.name}_*.parquet"):
        tail = manifest.stem[len(paths.image_dir.name) + 1 :]
        if tail.isascii() and tail.isdigit() and int(tail) >= image_size:  # isdigit() alone takes "²"
            sizes.append(int(tail))
    if not sizes:
        return None
    classes, samples = list_samples(paths.image_dir)
    current = fingerprint(paths.image_dir, classes, samples)
    for size in sorted(sizes):
        manifest = cache_paths(image_dir, size).manifest
        try:
            meta = read_metadata(manifest)
        except CacheError as err:
            log.warning("ignoring cache: %s", err)
            continue
        if meta.get("fingerprint") != current:
            log.warning("ignoring stale cache %s: images under %s changed since it was built; "
                        "run `tuner data cache` again", manifest, image_dir)
            continue
        return manifest
    return None


class CachedImageDataset(Dataset):
    """Samples ``(uint8 image tensor [3, S, S], class index)`` read from a cache's memory-mapped file.

    Drop-in for ``RobustImageFolder``: same ``classes``, ``class_to_idx``, ``targets``, ``samples``
    and order, and ``None`` for an image that could not be decoded. ``transform`` receives the uint8
    CHW tensor as a ``tv_tensors.Image`` (torchvision ``transforms.v2`` pipelines accept it as is;
    ``ToImage`` passes it through).
    The file is opened lazily in each process, so a DataLoader worker maps it instead of receiving a
    pickled copy of the pixels.
    """

    def __init__(self, manifest: str | os.PathLike, *, transform: Optional[Callable] = None) -> None:
        manifest = Path(manifest)
        meta = read_metadata(manifest)
        table = pq.read_table(manifest, columns=["index", "path", "target", "ok"]).to_pydict()
        self.manifest = manifest
        self.transform = transform
        self.size = int(meta["size"])
        self.fit = str(meta["fit"])
        self.classes: list[str] = list(meta["classes"])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets: list[int] = [int(t) for t in table["target"]]
        # The images sit beside the cache folder (DATA/.cache -> DATA/<split>), wherever DATA was
        # built or moved to since: the fingerprint, not the path, says whether they are the same.
        root = Path(os.path.abspath(manifest)).parent.parent / meta["split"]
        self.samples = [(str(root / rel), t) for rel, t in zip(table["path"], self.targets)]
        self._ok = np.asarray(table["ok"], dtype=bool)
        self._pixels_path = manifest.with_name(meta["pixels"])
        self._pixels: Optional[np.ndarray] = None
        if table["index"] != list(range(len(self.targets))):
            raise CacheError(f"{manifest}: rows are not numbered 0..{len(self.targets) - 1}")
        self._check_pixels(tuple(meta["shape"]))
        self.unreadable = int((~self._ok).sum())
        if self.unreadable:
            log.warning("%s: %d image(s) could not be decoded when the cache was built; they are "
                        "skipped and counted like unreadable files", manifest, self.unreadable)

    def _check_pixels(self, shape: tuple) -> None:
        expected = (len(self.targets), 3, self.size, self.size)
        try:
            pixels = np.load(self._pixels_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"{self._pixels_path}: unreadable cache pixels ({err})") from None
        if pixels.dtype != np.uint8 or pixels.shape != expected or tuple(shape) != expected:
            raise CacheError(
                f"{self._pixels_path}: holds {pixels.dtype} {tuple(pixels.shape)}, the manifest "
                f"{self.manifest.name} expects uint8 {expected}; rebuild with `tuner data cache`"
            )
        del pixels

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if not self._ok[index]:
            return None
        if self._pixels is None:
            self._pixels = np.load(self._pixels_path, mmap_mode="r")
        # np.array copies the row out of the shared mapping: the tensor owns writable memory. A
        # tv_tensors.Image skips the v2 transforms' "is this plain tensor an image?" checks (~15%).
        image = tv_tensors.Image(torch.from_numpy(np.array(self._pixels[index])))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pixels"] = None  # never pickle the mapping (it would copy every pixel)
        return state
