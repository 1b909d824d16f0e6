"""Benchmark: images/s delivered at 224 px by the trial's data path vs torchvision ImageFolder + PIL.

    .venv/bin/python bench/loader_throughput.py                       # real photos, then stand-ins
    .venv/bin/python bench/loader_throughput.py --photos real --rounds 3

Two photo sets, each measured whole: ``real``, the repository's 133 real camera photos
(bench/photos/README.md; ~484 x 385 px JPEGs), and ``standins``, the shipped 32 px sample upscaled
(bicubic) to a random 500-800 px side with Gaussian noise (sigma 6 grey levels) and saved at quality
90: their decode cost is of a competition photo's order, but they are not photos.

Rows, all in 2 DataLoader worker processes (persistent), batch 32:

* ``files: ImageFolder + PIL, <preset>, float``: what a hand-written script does, the preset's
  per-sample pipeline ending in ToDtype + Normalize in the workers (the baseline);
* ``trial: cache 224 px, <preset>, uint8 + finish``: the trainable's own path, its datasets over the
  decoded-image cache at the trial's size, its loader handing over uint8 batches, and its
  BatchFinish (conversion + normalisation) timed in the consumer, where a trial runs it;
* ``before: cache 224 px, <preset>, float in workers``: the same datasets and loader with the float
  pipeline in the workers, as trials ran before batches were finished on the device;
* ``rrc`` rows: RandomResizedCrop(224) + flip from the files and from a 256 px cache, float or
  uint8 (uint8 normalisation left to the consumer and NOT timed).

The page cache is warm for every loader (one untimed epoch first), so this measures CPU work, not
the disk. Loaders alternate round by round so that machine noise hits all alike; each row reports
its best round. ``speedup.trial`` (light) and ``speedup.trial_journal`` are trial / files on the
first photo set; goals 8x and 4x. Results: printed tables and bench/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import resources
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import PIL
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.batch_finish import BatchFinish  # noqa: E402
from trainables.cache import CachedImageDataset  # noqa: E402
from trainables.data import build_splits, make_loader  # noqa: E402
from trainables.transforms import (build_batch_tail, build_eval_pixels, build_train_pixels,  # noqa: E402
                                   build_train_transform)
from tuner.datasets.cache import build_cache  # noqa: E402

GOAL = 5.0
RESULTS = Path(__file__).resolve().parent / "results" / "loader_throughput.json"
MEAN, STD = [0.49, 0.48, 0.45], [0.24, 0.24, 0.26]  # CIFAR-like; the value does not change the cost


def make_photos(root: Path, count: int, seed: int = 0) -> dict:
    """``root/<label>/<name>.jpg``: sample images upscaled to 500-800 px with noise (see docstring)."""
    with resources.as_file(resources.files("tuner.datasets") / "cifar10_sample.parquet") as packed:
        table = pq.read_table(packed, columns=["split", "label", "name", "jpeg"]).to_pydict()
    rows = [r for r in zip(table["split"], table["label"], table["name"], table["jpeg"])
            if r[0] == "train"][:count]
    rng = np.random.default_rng(seed)
    sides, sizes = [], []
    for _, label, name, data in rows:
        width, height = (int(v) for v in rng.integers(500, 801, size=2))
        big = Image.open(BytesIO(data)).convert("RGB").resize((width, height), Image.BICUBIC)
        noisy = np.asarray(big, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        path = root / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        sides.append((width, height))
        sizes.append(path.stat().st_size)
    return {"count": len(rows), "mean_width": float(np.mean([s[0] for s in sides])),
            "mean_height": float(np.mean([s[1] for s in sides])),
            "mean_jpeg_kib": float(np.mean(sizes) / 1024)}


STANDINS = ("shipped CIFAR-10 sample upscaled bicubic to 500-800 px + Gaussian noise sigma 6, JPEG q90 "
            "(stand-ins, not real photos)")


def augment(*, pil: bool, normalise: bool) -> v2.Compose:
    crop_flip = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
    finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)] if normalise else []
    if pil:  # crop/flip on the PIL image, then the tensor
        return v2.Compose([*crop_flip, v2.ToImage(), *finish])
    return v2.Compose([v2.ToImage(), *crop_flip, *finish])  # the cache: already a uint8 tensor


PHOTOS = Path(__file__).resolve().parent / "photos" / "hymenoptera.parquet"
PHOTO_SETS = ("real", "standins")
TRIAL_PRESETS = {"light": 8.0, "journal": 4.0}  # preset -> goal: trial path / ImageFolder + PIL
TRIAL_SIZE = 224


def real_photos(root: Path, count: int) -> dict:
    """``root/<label>/<split>_<name>``: the repository's real photos (bench/photos/README.md), all
    of them in one training folder; ``count`` caps how many."""
    table = pq.read_table(PHOTOS, columns=["split", "label", "name", "jpeg"]).to_pylist()[:count]
    sides, sizes = [], []
    for row in table:
        path = root / row["label"] / f"{row['split']}_{row['name']}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["jpeg"])
        with Image.open(path) as image:
            sides.append(image.size)
        sizes.append(len(row["jpeg"]))
    return {"count": len(table), "mean_width": float(np.mean([s[0] for s in sides])),
            "mean_height": float(np.mean([s[1] for s in sides])),
            "mean_jpeg_kib": float(np.mean(sizes) / 1024),
            "how": "real camera photos (bench/photos/hymenoptera.parquet: ants and bees, ImageNet subset)"}


def loader_for(dataset, *, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                      persistent_workers=workers > 0, drop_last=False,
                      generator=torch.Generator().manual_seed(0))


@dataclass
class Row:
    """A loader and what its consumer does with each batch before the model could take it."""

    loader: Iterable
    consume: Callable[[Any, int], int] = field(default=lambda batch, step: len(batch[0]))


def timed_round(row: Row, min_seconds: float) -> tuple[float, int]:
    """Whole epochs until ``min_seconds`` have passed: (images/s, images)."""
    images, start, step = 0, time.perf_counter(), 0
    while True:
        for batch in row.loader:
            images += row.consume(batch, step)
            step += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed, images


def trial_row(train: Path, preset: str, *, batch_size: int, workers: int,
              finish_in_workers: bool = False) -> Row:
    """The trainable's own data path: its datasets (the decoded-image cache at the trial's size),
    its loader (uint8 batches) and its BatchFinish, timed in the consumer where a trial runs it.
    ``finish_in_workers``: the path before batches were finished on the device, float per sample."""
    pixels = build_train_transform(preset, TRIAL_SIZE, MEAN, STD) if finish_in_workers else \
        build_train_pixels(preset, TRIAL_SIZE)
    splits = build_splits(str(train), str(train), train_transform=pixels,
                          eval_transform=build_eval_pixels(TRIAL_SIZE), subset=None, seed=0,
                          cache_size=TRIAL_SIZE)
    assert splits.caches.get("train"), "the trial row must read the cache"
    loader = make_loader(splits.train, batch_size=batch_size, shuffle=True, num_workers=workers,
                         seed=0, pin_memory=False)
    finish = BatchFinish(MEAN, STD, tail=build_batch_tail(preset))  # the preset's batch ops, as a trial
    return Row(loader, lambda batch, step: len(finish(batch.images, step)))


def rows_for(train: Path, cache_manifest, args: argparse.Namespace) -> dict[str, Row]:
    rows = {}
    for delivered in ("float", "uint8"):
        normalise = delivered == "float"
        rows[f"files: ImageFolder + PIL, rrc, {delivered}"] = Row(loader_for(
            ImageFolder(str(train), transform=augment(pil=True, normalise=normalise)),
            batch_size=args.batch_size, workers=args.workers))
        rows[f"cache: {args.cache_size} px memmap, rrc, {delivered}"] = Row(loader_for(
            CachedImageDataset(cache_manifest, transform=augment(pil=False, normalise=normalise)),
            batch_size=args.batch_size, workers=args.workers))
    for preset in TRIAL_PRESETS:
        rows[f"files: ImageFolder + PIL, {preset}, float"] = Row(loader_for(
            ImageFolder(str(train), transform=build_train_transform(preset, TRIAL_SIZE, MEAN, STD)),
            batch_size=args.batch_size, workers=args.workers))
        rows[f"before: cache {TRIAL_SIZE} px, {preset}, float in workers"] = trial_row(
            train, preset, batch_size=args.batch_size, workers=args.workers, finish_in_workers=True)
        rows[f"trial: cache {TRIAL_SIZE} px, {preset}, uint8 + finish"] = trial_row(
            train, preset, batch_size=args.batch_size, workers=args.workers)
    return rows


def measure(photo_set: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        train = Path(tmp) / "data" / "train"
        photos = real_photos(train, args.images) if photo_set == "real" else \
            {**make_photos(train, args.images), "how": STANDINS}
        start = time.perf_counter()
        # One process: the decode rate per core (`tuner data cache` runs one process per core).
        built = build_cache(train, size=args.cache_size, workers=1, progress=False)
        build_s = time.perf_counter() - start
        build_cache(train, size=TRIAL_SIZE, workers=1, progress=False)  # what `tuner data cache` makes for a 224 px trial
        rows = rows_for(train, built.manifest, args)
        for row in rows.values():  # start workers, warm the page cache: untimed
            timed_round(row, 0)
        rounds: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, row in rows.items():  # alternating, so machine noise hits every row alike
                rounds[name].append(timed_round(row, args.seconds)[0])
        del rows
    best = {name: max(values) for name, values in rounds.items()}

    def ratio(numerator: str, denominator: str) -> float:
        return round(best[numerator] / best[denominator], 2)

    speedup = {delivered: ratio(f"cache: {args.cache_size} px memmap, rrc, {delivered}",
                                f"files: ImageFolder + PIL, rrc, {delivered}") for delivered in ("float", "uint8")}
    for preset in TRIAL_PRESETS:
        key = "trial" if preset == "light" else f"trial_{preset}"
        speedup[key] = ratio(f"trial: cache {TRIAL_SIZE} px, {preset}, uint8 + finish",
                             f"files: ImageFolder + PIL, {preset}, float")
        speedup[f"{key}_before"] = ratio(f"before: cache {TRIAL_SIZE} px, {preset}, float in workers",
                                         f"files: ImageFolder + PIL, {preset}, float")
    return {"photos": photos,
            "cache_build": {"images": built.images, "seconds": round(build_s, 2),
                            "images_per_s": round(built.images / build_s, 1), "processes": 1,
                            "MiB": round(built.nbytes / 2**20, 1)},
            "images_per_s": {name: round(value, 1) for name, value in best.items()},
            "rounds_images_per_s": {name: [round(v, 1) for v in values] for name, values in rounds.items()},
            "speedup": speedup}


def run(args: argparse.Namespace) -> dict:
    sets = {photo_set: measure(photo_set, args) for photo_set in args.photos}
    first = sets[args.photos[0]]
    return {
        "benchmark": "loader_throughput",
        "command": " ".join(["python bench/loader_throughput.py", *args.argv]),
        "photo_set": args.photos[0],
        "photos": first["photos"],
        "speedup": first["speedup"],  # the first photo set's (real photos by default)
        "goal_speedup": {"uint8": GOAL, **{("trial" if p == "light" else f"trial_{p}"): g
                                           for p, g in TRIAL_PRESETS.items()}},
        "sets": sets,
        "settings": {"crop": TRIAL_SIZE, "rrc": "RandomResizedCrop(224)+HorizontalFlip",
                     "float": "ToDtype+Normalize in the workers",
                     "uint8": "uint8 batches; ToDtype+Normalize left to the consumer (GPU), untimed",
                     "trial": "the trainable's path: its datasets over the 224 px cache, its loader "
                              "(uint8 batches), BatchFinish timed in the consumer; against ImageFolder "
                              "+ PIL with the same preset as a float pipeline in the workers",
                     "presets": list(TRIAL_PRESETS), "workers": args.workers,
                     "batch_size": args.batch_size, "cache_size": args.cache_size,
                     "rounds": args.rounds, "seconds_per_round": args.seconds},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "pillow": PIL.__version__,
                    "load_average_1m": round(os.getloadavg()[0], 2)},
    }


def print_table(result: dict) -> None:
    settings = result["settings"]
    for photo_set, measured in result["sets"].items():
        rates, photos = measured["images_per_s"], measured["photos"]
        print(f"\n{photo_set}: loader throughput at {settings['crop']} px, {settings['workers']} workers, "
              f"batch {settings['batch_size']}, {photos['count']} photos ~{photos['mean_width']:.0f}x"
              f"{photos['mean_height']:.0f} px, {photos['mean_jpeg_kib']:.0f} KiB\n({photos['how']})")
        print(f"{'loader':<52} {'images/s':>10}")
        for name, rate in rates.items():
            print(f"{name:<52} {rate:>10.1f}")
        build = measured["cache_build"]
        print(f"cache build: {build['images']} images in {build['seconds']} s "
              f"({build['images_per_s']} images/s in one process; {build['MiB']} MiB)")
        for key, speedup in measured["speedup"].items():
            goal = result["goal_speedup"].get(key)
            verdict = "" if goal is None else f", {'meets' if speedup >= goal else 'MISSES'} the goal of {goal}x"
            print(f"speedup {key}: {speedup}x{verdict}")
    print(f"1-minute load average during the run: {result['machine']['load_average_1m']} on "
          f"{result['machine']['cpus']} CPUs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=",".join(PHOTO_SETS),
                        help="photo sets, the first one's speedups on top: real (bench/photos) and/or standins")
    parser.add_argument("--images", type=int, default=300, help="photos per set at most (real: 133)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-size", type=int, default=256, help="side of the cached images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum seconds per round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.photos = [p for p in args.photos.split(",") if p]
    unknown = set(args.photos) - set(PHOTO_SETS)
    if unknown or not args.photos:
        parser.error(f"--photos: choose from {', '.join(PHOTO_SETS)}")
    torch.set_num_threads(1)  # the consumer only receives batches; the workers use one thread each
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    main()
