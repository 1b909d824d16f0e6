"""Per-channel mean/std of an ImageFolder tree (for ``transforms.Normalize``).

Every image is converted to RGB and resized to ``resize x resize`` before
counting: the statistics of a 64x64 thumbnail are within a fraction of a
percent of the full-size ones and are orders of magnitude cheaper. Workers
return integer sums (sum of values, sum of squares, pixel count) over uint8
pixels; integers combine exactly, so the result does not depend on the
number of workers or the chunking, and the std is the exact population std
``sqrt(E[x^2] - E[x]^2)`` of the values scaled to [0, 1].

Where to keep the result: :func:`default_stats_path` gives
``<data_root>/stats.json``, where ``data_root`` is the parent of the train
folder (``data/train`` -> ``data/stats.json``), i.e. beside ``train/`` and
``val/`` and outside every ImageFolder tree.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from tuner.datasets.safe_files import open_new

from trainables.image_formats import decode_formats, over_pixel_limit

__all__ = [
    "IMAGE_EXTENSIONS",
    "channel_stats",
    "default_stats_path",
    "list_image_folder",
    "load_stats",
    "save_stats",
]

# Same extensions as torchvision's ImageFolder, plus GIF.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
_RESAMPLE = Image.Resampling.BILINEAR
# (sum[3], sum_sq[3], pixels, images, skipped) for one chunk of files.
_Sums = tuple[list[int], list[int], int, int, int]


def list_image_folder(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(class_name, path)`` for every image in ``root/<class>/``, sorted.

    Hidden entries and files with non-image extensions (``.part``...) are
    ignored, as ImageFolder would.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    found: list[tuple[str, Path]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        for path in sorted(class_dir.iterdir()):
            if (
                path.is_file()
                and not path.name.startswith(".")
                and path.suffix.lower() in IMAGE_EXTENSIONS
            ):
                found.append((class_dir.name, path))
    return found


def channel_stats(
    train_dir: str | os.PathLike[str],
    *,
    resize: int | None = 64,
    workers: int = 2,
    progress: bool = True,
    chunk_size: int = 128,
) -> dict[str, Any]:
    """Mean and population std per RGB channel, values scaled to [0, 1].

    Args:
        train_dir: ImageFolder root (``train_dir/<class>/<image>``).
        resize: each image is resized to ``resize x resize`` (bilinear) after
            RGB conversion; None keeps the native size.
        workers: processes; ``<= 1`` computes in this process.
        progress: show a tqdm bar.
        chunk_size: images per task sent to a worker.

    Returns:
        ``{"mean": [r, g, b], "std": [r, g, b], "count": images used,
        "skipped": unreadable images, "resize": resize}``.

    Raises:
        FileNotFoundError: ``train_dir`` is not a directory.
        ValueError: no readable image was found, or bad arguments.
    """
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be >= 1 or None, got {resize}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    paths = [str(p) for _, p in list_image_folder(train_dir)]
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)]
    total = _Totals()
    with tqdm(total=len(paths), disable=not progress, unit="img", desc="stats") as bar:
        for sums in _map_chunks(chunks, resize, workers):
            total.add(sums)
            bar.update(sums[3] + sums[4])
    if total.images == 0:
        raise ValueError(f"no readable image under {train_dir} ({total.skipped} unreadable)")
    return total.result(resize)


def _map_chunks(chunks: list[list[str]], resize: int | None, workers: int) -> Iterable[_Sums]:
    """Yield per-chunk sums, in a process pool when it is worth it."""
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield _chunk_sums(chunk, resize)
        return
    # "spawn": forking a process that may hold threads (torch, ray, the
    # test server) can deadlock; spawn starts clean interpreters.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context) as pool:
        futures = [pool.submit(_chunk_sums, chunk, resize) for chunk in chunks]
        for future in as_completed(futures):
            yield future.result()


def _chunk_sums(paths: Sequence[str], resize: int | None) -> _Sums:
    """Integer sums for one chunk; runs in a worker process."""
    total = np.zeros(3, dtype=np.int64)
    total_sq = np.zeros(3, dtype=np.int64)
    pixels = images = skipped = 0
    for path in paths:
        try:
            array = load_rgb_array(path, resize)
        except Exception:  # unreadable/corrupt image: counted, never fatal
            skipped += 1
            continue
        flat = array.reshape(-1, 3).astype(np.int64)
        total += flat.sum(axis=0)
        total_sq += (flat * flat).sum(axis=0)
        pixels += flat.shape[0]
        images += 1
    return [int(v) for v in total], [int(v) for v in total_sq], pixels, images, skipped


def load_rgb_array(path: str | os.PathLike[str], resize: int | None) -> np.ndarray:
    """The uint8 ``(H, W, 3)`` array that :func:`channel_stats` counts for ``path``.

    Raises (a counted skip) for a format outside ``DECODE_FORMATS`` and for an image over
    Pillow's pixel limit: open() only reads the header, so the size is checked before decoding.
    """
    with Image.open(path, formats=decode_formats()) as img:
        too_big = over_pixel_limit(img)
        if too_big:
            raise Image.DecompressionBombError(f"{path}: {too_big}")
        rgb = img.convert("RGB")
    if resize is not None:
        rgb = rgb.resize((resize, resize), _RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


class _Totals:
    """Exact accumulation of chunk sums (Python ints never overflow)."""

    def __init__(self) -> None:
        self.sum = [0, 0, 0]
        self.sum_sq = [0, 0, 0]
        self.pixels = self.images = self.skipped = 0

    def add(self, sums: _Sums) -> None:
        chunk_sum, chunk_sq, pixels, images, skipped = sums
        self.sum = [a + b for a, b in zip(self.sum, chunk_sum, strict=True)]
        self.sum_sq = [a + b for a, b in zip(self.sum_sq, chunk_sq, strict=True)]
        self.pixels += pixels
        self.images += images
        self.skipped += skipped

    def result(self, resize: int | None) -> dict[str, Any]:
        n = self.pixels
        mean = [s / (255 * n) for s in self.sum]
        # Var = (n * sum_sq - sum^2) / (255 n)^2, numerator exact in integers,
        # so there is no catastrophic cancellation.
        std = [
            math.sqrt(max(n * sq - s * s, 0) / (255 * n) ** 2)
            for s, sq in zip(self.sum, self.sum_sq, strict=True)
        ]
        return {
            "mean": mean,
            "std": std,
            "count": self.images,
            "skipped": self.skipped,
            "resize": resize,
        }


def default_stats_path(train_dir: str | os.PathLike[str]) -> Path:
    """``<data_root>/stats.json`` where ``data_root`` is ``train_dir``'s parent."""
    return Path(train_dir).resolve().parent / "stats.json"


def save_stats(stats: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate and write ``stats`` as JSON (atomically); returns the path.

    Use :func:`default_stats_path` for the conventional location.
    """
    _validate(stats, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open_new(tmp, "w", encoding="utf-8") as fh:  # never through a symlink planted at .tmp
        fh.write(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save_stats`.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not JSON, or mean/std/count missing or malformed.
    """
    try:
        stats: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc
    _validate(stats, str(path))
    return stats


def _validate(stats: Any, where: str) -> None:
    if not isinstance(stats, dict):
        raise ValueError(f"{where}: stats must be an object")
    for key in ("mean", "std"):
        values = stats.get(key)
        if (
            not isinstance(values, list)
            or len(values) != 3
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise ValueError(f"{where}: {key!r} must be a list of 3 finite numbers")
    count = stats.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{where}: 'count' must be a positive integer")
