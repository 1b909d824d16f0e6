"""Benchmark: how many images/s a trial's data path can deliver with no model, and what one costs.

    python bench/loader_ceiling.py --device cuda          # on the GPU machine (gpu_check.sh runs it)
    .venv/bin/python bench/loader_ceiling.py --device cpu --workers 0,2 --images 512 --batch 32

engine_throughput.py --source cache measures a trial (loader + model) against a plain loop; when
the GPU sits idle half the epoch, this says which part of the data path sets the pace. On the same
cached real photos and the same trial configuration (engine_trial.py), without any model:

* ``per_image_ms``: one sample as a loader worker makes it (seeding, the memory-mapped read, the
  preset's crop/resize/flip on uint8), in this process with torch at 1 thread (a worker's setting),
  per augmentation preset: the cost every worker pays per image;
* ``loader``: images/s out of the trial's own train loader (``TrialState.train_loader``: its workers,
  pinned memory, the skip-counting collate) for each worker count, nothing else done per batch;
* ``to_device``: the same, each batch also copied to the device (non_blocking) and finished there
  (``BatchFinish``: float conversion + normalisation), synchronised at the end: what a trial's
  training loop receives ready for the model;
* ``finish_ms``: per preset, one batch's ``BatchFinish`` on the device (on a GPU the crops and
  resizes the workers left to it, then the preset's batch ops, e.g. ``journal``'s rotation, jitter
  and grayscale, then conversion and normalisation), best of 5, synchronised: what moving those ops
  from the workers to the device costs the device;
* ``batched_crops``: the rrc family's per-sample crop + resize (torchvision's ``resized_crop``,
  antialiased, what a CPU trial's worker does per image on 1 thread) against the same crops of a
  whole batch on the device (``trainables/device_crops.py``: ``torchvision.ops.roi_align``, what a
  CUDA trial reading the cache does), from the same draws on the same cached pixels: ms of each,
  and how far apart their pixels are (grey levels).

Each rate is images / wall seconds of a pass after one untimed warm-up pass. JSON to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_trial import cached_photos, trial_config  # noqa: E402
from trainables.cache import CachedImageDataset, find_cache  # noqa: E402
from trainables.device_crops import FLIP, CropPlan, DeferredResizedCrop, crop_on_device  # noqa: E402
from trainables.trial_state import TrialState  # noqa: E402

PRESETS = ("none", "light", "rrc", "journal")


def per_image_ms(state: TrialState, samples: int) -> float:
    """Milliseconds per training sample made in this process, as a worker makes it (1 thread)."""
    data = state.train_loader.dataset  # SeededItems: [(index, seed)] seeds, reads and augments
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data[(0, 1)]  # the memory map opens on the first read
        start = time.perf_counter()
        for i in range(samples):
            data[(i % len(data), 1000 + i)]
        return round((time.perf_counter() - start) / samples * 1000, 3)
    finally:
        torch.set_num_threads(threads)


def finish_ms(state: TrialState, device: torch.device, batch: int, size: int, repeats: int = 5) -> float:
    """Milliseconds of the trial's BatchFinish on one batch already on ``device`` (best of
    ``repeats``, after a warm-up), as its loader hands it over: where the trial leaves its crops to
    the device, a collated CropPlan of its own samples (the crops are timed too); else a uint8 batch
    of noise (these ops cost the same on any picture)."""
    if state.finish_train.crop_size is not None:
        data = state.train_loader.dataset  # SeededItems: (index, seed) -> ((CropPlan, label), index)
        images = default_collate([data[(i % len(data), i)][0][0] for i in range(batch)]).to(device)
    else:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0)).to(device)
    best = float("inf")
    for step in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        state.finish_train(images, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:  # the first call is the warm-up (kernels load, constants move to the device)
            best = min(best, time.perf_counter() - start)
    return round(best * 1000, 3)


def batched_crops(train_dir: str, cache_size: int, size: int, batch: int, device: torch.device,
                  min_scale: float = 0.25, repeats: int = 5) -> dict:
    """RandomResizedCrop's crops of one batch of cached images, per sample on the CPU and batched
    on ``device`` with roi_align, from the same draws (module docstring)."""
    cached = CachedImageDataset(find_cache(train_dir, cache_size))
    images = torch.stack([cached[i % len(cached)][0].as_subclass(torch.Tensor) for i in range(batch)])
    draw = DeferredResizedCrop(size, scale=(min_scale, 1.0))  # the draws a CUDA trial's workers make
    torch.manual_seed(0)
    drawn = default_collate([draw(image) for image in images])
    plan = CropPlan(images, drawn.boxes * torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])).to(device)  # crops, no flips
    boxes = drawn.boxes[:, :FLIP].long().tolist()  # top, left, height, width per sample

    def per_sample() -> torch.Tensor:
        return torch.stack([TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
                            for image, (top, left, height, width) in zip(images, boxes)])

    def batched() -> torch.Tensor:
        return crop_on_device(plan, size)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a worker's setting
    try:
        reference, cpu_s = per_sample(), float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            per_sample()
            cpu_s = min(cpu_s, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    ours, device_s = batched(), float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        batched()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        device_s = min(device_s, time.perf_counter() - start)
    apart = (ours.round().clamp(0, 255).to(torch.uint8).cpu().int() - reference.int()).abs().float().flatten()
    return {"batch_size": batch, "cache_size": cache_size, "image_size": size, "min_scale": min_scale,
            "cpu_per_image_ms": round(cpu_s / batch * 1000, 4),
            "device_batch_ms": round(device_s * 1000, 3),
            "device_per_image_ms": round(device_s / batch * 1000, 4),
            "difference_grey_levels": {"mean": round(float(apart.mean()), 3),
                                       "p99": float(apart.kthvalue(max(1, int(0.99 * apart.numel()))).values),
                                       "max": float(apart.max())},
            "how": "best of %d; CPU: torchvision resized_crop antialias=True per sample, 1 thread; device: "
                   "trainables.device_crops.crop_on_device (roi_align, sampling_ratio=-1, aligned=True) on "
                   "the batch, synchronised; the difference: |rounded crop_on_device - torchvision| per "
                   "pixel" % repeats}


def loader_rate(state: TrialState, device: torch.device, *, to_device: bool) -> float:
    """Images/s of one pass over the trial's train loader (after a warm-up pass)."""
    rates = []
    for epoch in (1, 2):
        state.train_loader.sampler.set_epoch(epoch)
        state.finish_train.set_epoch(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seen, start = 0, time.perf_counter()
        for step, batch in enumerate(state.train_loader):
            if to_device:
                images = batch.images.to(device, non_blocking=True)
                state.finish_train(images, step)
            seen += batch.labels.numel()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(seen / (time.perf_counter() - start))
    return round(rates[-1], 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", type=Path, help="folder of photos (default: the repository's real ones)")
    parser.add_argument("--images", type=int, help="images per pass (cuda 10240, cpu 512)")
    parser.add_argument("--batch", type=int, help="batch size (cuda 256, cpu 32)")
    parser.add_argument("--workers", help="worker counts, comma-separated (cuda 4,8,cores-2; cpu 0,2)")
    parser.add_argument("--image-size", type=int, help="trial image size (cuda 224, cpu 64)")
    parser.add_argument("--samples", type=int, default=200, help="samples timed per preset in-process")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loader_ceiling.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    cores = os.cpu_count() or 2
    images, batch = args.images or (10240 if cuda else 512), args.batch or (256 if cuda else 32)
    size = args.image_size or (224 if cuda else 64)
    workers = [int(w) for w in (args.workers or (f"4,8,{max(1, cores - 2)}" if cuda else "0,2")).split(",")]
    report = {"benchmark": "loader_ceiling", "device": args.device, "cores": cores, "torch": torch.__version__,
              "images_per_pass": images, "batch_size": batch, "image_size": size, "how": __doc__,
              "per_image_ms": {}, "finish_ms": {}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="loader-ceiling-") as tmp:
        data = cached_photos(args.photos, Path(tmp), images=images, device=device,
                             cache_size=256 if cuda else 72, max_photos=None if cuda else 16)
        report["cache"] = data["cache"]
        base = trial_config(data, arch="resnet18", width=0.125, image_size=size, batch=batch, workers=0,
                            compile=False, steps=images // batch, device=device)
        for preset in PRESETS:
            state = TrialState(dataclasses.replace(base, augmentation=preset, aug={}))
            report["per_image_ms"][preset] = per_image_ms(state, args.samples)
            report["finish_ms"][preset] = finish_ms(state, device, batch, size)
            print(f"per image, 1 thread: {preset:8s} {report['per_image_ms'][preset]:.3f} ms   "
                  f"BatchFinish per batch of {batch} on {args.device}: {report['finish_ms'][preset]:.3f} ms",
                  flush=True)
        report["batched_crops"] = batched_crops(data["train_dir"], report["cache"]["size"], size, batch, device)
        crops = report["batched_crops"]
        print(f"rrc crops: {crops['cpu_per_image_ms']:.3f} ms per image per sample on 1 CPU thread, "
              f"{crops['device_batch_ms']:.3f} ms per batch of {batch} on {args.device} with roi_align; pixels "
              f"{crops['difference_grey_levels']['mean']:.2f} grey levels apart on average", flush=True)
        for count in workers:
            state = TrialState(dataclasses.replace(base, num_workers=count))
            row = {"augmentation": "rrc", "workers": count,
                   "loader": loader_rate(state, device, to_device=False),
                   "to_device": loader_rate(state, device, to_device=True)}
            report["rows"].append(row)
            print(f"rrc, {count:2d} workers: loader {row['loader']:9.1f} img/s   to device + finish "
                  f"{row['to_device']:9.1f} img/s", flush=True)
            del state
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
    args.out.write_text(json.dumps(report, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
