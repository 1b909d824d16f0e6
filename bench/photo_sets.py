"""Photos for the GPU benchmarks (gpu_decode.py, engine_throughput.py --source cache, gpu_check.sh).

Real camera photos: a folder of them when one is given, else the repository's own 133
(bench/photos/hymenoptera.parquet, bench/photos/README.md). Only if neither is there, stand-ins: the
shipped CIFAR-10 sample upscaled to 500-800 px with noise (``bench.loader_throughput.make_photos``),
whose decode cost is of the right order but which are not photos; every result says which it used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from PIL import Image

from trainables.image_files import IMAGE_EXTENSIONS

STAND_INS = ("stand-ins: the shipped CIFAR-10 sample upscaled (bicubic) to 500-800 px + Gaussian "
             "noise, JPEG q90 (bench/loader_throughput.py); not real photos")


def photo_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (any depth; hidden folders such as .cache skipped), sorted."""
    return sorted(path for path in root.rglob("*")
                  if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in path.relative_to(root).parts))


def photo_source(photos: Optional[Path], work: Path, count: Optional[int]) -> tuple[list[Path], dict]:
    """(files, a description for the JSON): the first ``count`` real photos under ``photos`` when
    that folder holds any, else of the repository's packed set (unpacked under ``work``), else
    ``count`` stand-ins made under ``work`` (``count`` None: all / 300)."""
    from bench.loader_throughput import PHOTOS, make_photos, real_photos  # pyarrow: only here

    if photos is not None and photos.is_dir():
        files = photo_files(photos)[:count]
        if files:
            return files, {"kind": "real", "root": str(photos), **describe(files),
                           "how": "real camera photos (hymenoptera: ImageNet ants and bees)"}
    if PHOTOS.is_file():
        real_photos(work / "real", count or 10**6)
        files = photo_files(work / "real")
        return files, {"kind": "real", "root": str(PHOTOS.relative_to(PHOTOS.parents[2])), **describe(files),
                       "how": "real camera photos (bench/photos/hymenoptera.parquet: ImageNet ants and bees)"}

    make_photos(work / "stand-ins", count or 300)
    files = photo_files(work / "stand-ins")
    return files, {"kind": "stand-in", "root": None, **describe(files), "how": STAND_INS,
                   "asked_for": str(photos) if photos is not None else None}


def describe(files: list[Path]) -> dict:
    """Count, formats, mean width, height (px) and file size (KiB)."""
    sizes, formats = [], {}
    for path in files:
        with Image.open(path) as image:
            sizes.append((*image.size, path.stat().st_size / 1024))
            formats[image.format] = formats.get(image.format, 0) + 1
    mean = [round(sum(s[i] for s in sizes) / len(sizes), 1) for i in range(3)]
    return {"count": len(files), "formats": formats, "mean_width": mean[0], "mean_height": mean[1],
            "mean_kib": mean[2], "max_side": max(max(w, h) for w, h, _ in sizes)}


def image_folder(files: list[Path], dest: Path, *, at_least: int = 0) -> Path:
    """``dest/<class>/<copy>_<name>`` symlinks: an ImageFolder tree of the files (class = the file's
    folder name), repeated until it holds ``at_least`` images (a benchmark epoch needs more
    images than the set has; the copies are the same photos, so decoding them costs the same)."""
    copies = max(1, math.ceil(at_least / len(files)))
    for copy in range(copies):
        for index, path in enumerate(files):
            target = dest / path.parent.name / f"{copy}_{index}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target)
    return dest
