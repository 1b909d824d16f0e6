"""Benchmark: training images/s of our engine vs a minimal plain PyTorch loop, same model/batch/data.

    .venv/bin/python bench/engine_throughput.py                 # CPU: resnet18 w0.25, 32 px
    .venv/bin/python bench/engine_throughput.py --device cuda   # a real trial from the cache, 224 px
    .venv/bin/python bench/engine_throughput.py --device cuda --source synthetic   # tensors, r18+r50

Sources: ``sample`` (the CPU default: the shipped sample's photos decoded into memory),
``synthetic`` (random uint8 tensors in memory), and ``cache`` (the CUDA default; ``engine_trial.py``
says how): photos in a decoded-image cache read by a real trial configuration (``TrialState``:
its loader workers, rrc augmentation, onecycle, channels_last, bf16 autocast, and torch.compile
with ``--compile``), at the batch sizes of ``tuner diagnose batch-size``'s probe, the engine's
epochs (``state.train_epoch``) against the plain loop on the same model object and cached dataset,
with the GPU's busy share (NVML) and the allocator's peak memory per row.

Both loops train the same model object on the same in-memory dataset (uint8 images, the same
transform) through a DataLoader of the same batch size, alternating epoch by epoch so that machine
noise hits both alike; the table reports the median epoch of each and their ratio (goal >= 0.97:
the engine's bookkeeping — skip-counting collate, per-sample seeding, divergence check, device-side
sums — must cost under 3%). On CUDA both loops use bf16 autocast + channels_last + pinned memory.
Results are printed and saved to bench/results/engine_throughput.json after every row (a run cut
short keeps the rows it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import resources
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.engine_trial import (BUSY_HOW, ROW_HOW, BusySampler, cached_photos,  # noqa: E402
                                memory_of, probe_batch_size, trial_config)
from trainables.cache import CachedImageDataset  # noqa: E402
from trainables.data import make_loader  # noqa: E402
from trainables.engine import autocast_for, train_one_epoch  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.trial_state import TrialState  # noqa: E402
from trainables.transforms import build_train_pixels  # noqa: E402
from tuner.diagnose.memory import release  # noqa: E402

GOAL = 0.97
RESULTS = Path(__file__).resolve().parent / "results" / "engine_throughput.json"


class InMemoryImages(Dataset):
    """uint8 CHW images held in memory, transformed on access (no file decoding in the timing)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])


def sample_images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` training photos of the shipped CIFAR-10 sample, decoded (32 px)."""
    with resources.as_file(resources.files("tuner.datasets") / "cifar10_sample.parquet") as packed:
        table = pq.read_table(packed, columns=["split", "label", "jpeg"]).to_pydict()
    rows = [(l, j) for s, l, j in zip(table["split"], table["label"], table["jpeg"]) if s == "train"][:count]
    names = sorted({label for label, _ in rows})
    images = [np.asarray(Image.open(BytesIO(data)).convert("RGB")) for _, data in rows]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor([names.index(label) for label, _ in rows])


def synthetic_images(count: int, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return pixels, torch.randint(0, classes, (count,), generator=generator)


def plain_epoch(model, loader, optimizer, device, finish=None) -> int:
    """The minimal loop every tutorial writes: the baseline. ``finish``: what turns a uint8 batch
    into the model's input on the device, for a trial pipeline that leaves that to the GPU."""
    model.train()
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if finish is not None and images.dtype == torch.uint8:
            images = finish(images)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += labels.numel()
    return seen


def timed(run, device) -> tuple[float, float]:
    """(images per wall-clock second, images per second of this process's CPU time).

    On a shared machine the wall clock also measures the neighbours; CPU time (user + system, all
    threads of this process) does not, so on CPU its ratio is the steadier verdict.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    seen = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start), seen / max(time.process_time() - cpu_start, 1e-9)


def measure(*, arch: str, width: float, size: int, batch: int, dataset: Dataset, device: torch.device,
            workers: int, repeats: int, classes: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=classes, image_size=size, width=width).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pin = device.type == "cuda"
    ours = make_loader(dataset, batch_size=batch, shuffle=True, num_workers=workers, seed=0, pin_memory=pin)
    plain = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin,
                       persistent_workers=workers > 0)

    def run_ours(epoch: int):
        ours.sampler.set_epoch(epoch)
        return train_one_epoch(model, ours, optimizer, device).images

    wall: dict[str, list[float]] = {"engine": [], "plain": []}
    cpu: dict[str, list[float]] = {"engine": [], "plain": []}
    for epoch in range(repeats + 1):  # epoch 0 warms up both (allocator, cudnn autotuning, workers)
        for name, run in (("plain", lambda: plain_epoch(model, plain, optimizer, device)),
                          ("engine", lambda: run_ours(epoch))):
            wall_rate, cpu_rate = timed(run, device)
            if epoch > 0:
                wall[name].append(round(wall_rate, 1))
                cpu[name].append(round(cpu_rate, 1))
    engine, baseline = statistics.median(wall["engine"]), statistics.median(wall["plain"])
    row = {"arch": arch, "width": width, "image_size": size, "batch_size": batch,
           "images_per_epoch": len(dataset), "workers": workers, "repeats": repeats,
           "engine_images_per_s": round(engine, 1), "plain_images_per_s": round(baseline, 1),
           "ratio": round(engine / baseline, 4), "engine_all": wall["engine"], "plain_all": wall["plain"]}
    if device.type == "cpu" and workers == 0:  # CPU time covers all the work only without workers
        row["cpu_time_ratio"] = round(statistics.median(cpu["engine"]) / statistics.median(cpu["plain"]), 4)
    return row


def per_sample_train_set(state: TrialState) -> Dataset:
    """The trial's training images through its preset's per-sample pipeline, what a hand-written
    script's loader runs: a CUDA trial reading the cache leaves its crops to the device instead
    (trainables/device_crops.py), and the plain loop would not know what to do with those."""
    data, cache = state.splits.train, state.splits.caches.get("train")
    if state.finish_train.crop_size is None or cache is None:
        return data
    config = state.config
    cropped = CachedImageDataset(Path(cache), transform=build_train_pixels(config.augmentation, config.image_size,
                                                                           config.aug))
    return Subset(cropped, data.indices) if isinstance(data, Subset) else cropped


def measure_trial(config, *, repeats: int, device: torch.device) -> dict:
    """A TrialState's epochs (the engine as a trial runs it) against the plain loop on the same model
    object (compiled when the config says so) and the same cached dataset, alternating epochs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the row's own peak, not the probe's
    state = TrialState(config)
    steps, batch = config.max_steps_per_epoch, config.batch_size
    data = per_sample_train_set(state)
    plain = DataLoader(data, batch_size=batch, num_workers=config.num_workers, drop_last=True,
                       sampler=RandomSampler(data, num_samples=steps * batch,
                                             generator=torch.Generator().manual_seed(0)),
                       pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0)
    finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)])
    runs = {"plain": lambda epoch: plain_epoch(state.forward, plain, state.optimizer, device, finish),
            "engine": lambda epoch: state.train_epoch(epoch).images}
    wall: dict[str, list] = {"engine": [], "plain": []}
    busy: dict[str, list] = {"engine": [], "plain": []}
    warmup: dict[str, float] = {}
    sampler = BusySampler(device)
    for epoch in range(1, repeats + 2):  # epoch 1 warms up (workers, cudnn autotuning, compile)
        for name, run in runs.items():
            with sampler:
                wall_rate, _ = timed(lambda: run(epoch), device)
            if epoch == 1:
                warmup[name] = round(steps * batch / wall_rate, 2)
            else:
                wall[name].append(round(wall_rate, 1))
                busy[name].append(sampler.mean())
    engine, baseline = statistics.median(wall["engine"]), statistics.median(wall["plain"])
    return {"source": "cache", "arch": config.arch, "width": config.width, "image_size": config.image_size,
            "batch_size": batch, "compile": config.compile and device.type == "cuda",
            "augmentation": config.augmentation, "images_per_epoch": steps * batch,
            "workers": config.num_workers, "repeats": repeats, "engine_images_per_s": round(engine, 1),
            "plain_images_per_s": round(baseline, 1), "ratio": round(engine / baseline, 4),
            "engine_all": wall["engine"], "plain_all": wall["plain"], "warmup_epoch_s": warmup,
            "gpu_busy_pct": {name: _median(values) for name, values in busy.items()},
            "gpu_busy_error": sampler.error, **memory_of(device)}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def trial_rows(device: torch.device, args, work: Path, report: dict) -> None:
    """``--source cache``: the rows of engine_trial.py's configuration, saved one by one."""
    cuda = device.type == "cuda"
    arch, width, size = args.arch, args.width or (1.0 if cuda else 0.125), args.image_size or (224 if cuda else 32)
    images = args.images or (8192 if cuda else 128)
    data = cached_photos(args.photos, work, images=images, device=device,
                         cache_size=args.cache_size or (256 if cuda else 40),
                         max_photos=args.max_photos or (None if cuda else 16))
    classes = len([d for d in Path(data["train_dir"]).iterdir() if d.is_dir()])
    probe = probe_batch_size(arch, width, size, classes, device, cap=args.max_batch or (1024 if cuda else 64))
    # The temporary folders are gone when the report is read: it keeps what was in them.
    kept = {k: v for k, v in data.items() if k not in ("train_dir", "val_dir")}
    report.update(source="cache", data=kept, probe=probe, gpu_busy_how=BUSY_HOW, how=ROW_HOW)
    batches = sorted({args.batch or (256 if cuda else 32), probe["max_batch_size"]})
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile or ("both" if cuda else "off")]
    workers = args.workers if args.workers is not None else (max(1, (os.cpu_count() or 2) - 2) if cuda else 0)
    for compiled in compiles:  # compiled rows last: the eager ones are saved if time runs out
        for batch in batches if not compiled else batches[-1:]:
            config = trial_config(data, arch=arch, width=width, image_size=size, batch=batch,
                                  workers=workers, compile=compiled, steps=max(1, images // batch),
                                  device=device)
            try:
                row = measure_trial(config, repeats=args.repeats, device=device)
            except Exception as err:  # e.g. torch.compile without its toolchain: recorded, next row
                row = {"source": "cache", "arch": arch, "width": width, "image_size": size,
                       "batch_size": batch, "compile": compiled, "error": f"{type(err).__name__}: {err}"[:800]}
            row["batch_from"] = "probe max" if batch == probe["max_batch_size"] else "default"
            report["rows"].append(row)
            print_row(row)
            save(report, args.out)
            release(device)  # the finished row's loader workers, model and cached blocks


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['arch']:>10} bs{row['batch_size']:<4} compile {row['compile']}: {row['error']}", flush=True)
        return
    verdict = row.get("cpu_time_ratio", row["ratio"])
    extra = f"  cpu-time ratio {row['cpu_time_ratio']:.3f}" if "cpu_time_ratio" in row else ""
    if "gpu_busy_pct" in row:
        extra += f"  compile {'on' if row['compile'] else 'off'}  GPU busy {row['gpu_busy_pct']}"
    print(f"{row['arch']:>10} w{row['width']:<5g} {row['image_size']:>4}px bs{row['batch_size']:<4} "
          f"engine {row['engine_images_per_s']:>9.1f} img/s  plain {row['plain_images_per_s']:>9.1f} img/s  "
          f"ratio {row['ratio']:.3f}{extra}  {'ok' if verdict >= GOAL else 'BELOW GOAL'} (goal >= {GOAL})",
          flush=True)


def cases(device: torch.device, args, source) -> list[dict]:
    if (source or ("synthetic" if device.type == "cuda" else "sample")) == "synthetic":
        pixels, labels = synthetic_images(args.images or 4096, 224, 1000)
        transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                                v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        data = InMemoryImages(pixels, labels, transform)
        return [dict(arch=arch, width=1.0, size=224, batch=args.batch or 256, dataset=data, classes=1000,
                     workers=args.workers if args.workers is not None else 8)
                for arch in ("resnet18", "resnet50")]
    pixels, labels = sample_images(args.images or 512)
    transform = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])])
    data = InMemoryImages(pixels, labels, transform)
    return [dict(arch="resnet18", width=0.25, size=32, batch=args.batch or 64, dataset=data, classes=10,
                 workers=args.workers or 0)]


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--source", choices=("sample", "synthetic", "cache"),
                        help="what trains (default: cpu sample, cuda cache; see the docstring)")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per loop (after a warm-up)")
    parser.add_argument("--images", type=int, help="images per epoch (cpu 512, cuda 4096; cache: 128 / 8192)")
    parser.add_argument("--batch", type=int, help="batch size (cpu 64, cuda 256; cache: 32 / 256, "
                        "plus the probe's largest)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (cpu 0, cuda 8; cache cuda: cores - 2)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    cache = parser.add_argument_group("--source cache")
    cache.add_argument("--photos", type=Path, help="folder of real photos (default: stand-ins)")
    cache.add_argument("--max-photos", type=int, help="photos used at most (cpu 16, cuda all / 300 stand-ins)")
    cache.add_argument("--arch", default="resnet18")
    cache.add_argument("--width", type=float, help="channel multiplier (cpu 0.125, cuda 1.0)")
    cache.add_argument("--image-size", type=int, help="trial image_size (cpu 32, cuda 224)")
    cache.add_argument("--cache-size", type=int, help="side of the cached images (cpu 40, cuda 256)")
    cache.add_argument("--max-batch", type=int, help="cap of the batch-size probe (cpu 64, cuda 1024)")
    cache.add_argument("--compile", choices=("off", "on", "both"), help="torch.compile rows (cpu off, cuda both)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "goal_ratio": GOAL, "rows": []}
    if (args.source or ("cache" if device.type == "cuda" else "sample")) == "cache":
        with tempfile.TemporaryDirectory(prefix="engine-cache-") as tmp:
            trial_rows(device, args, Path(tmp), report)
    else:
        for case in cases(device, args, args.source):
            report["rows"].append(measure(device=device, repeats=args.repeats, **case))
            print_row(report["rows"][-1])
            save(report, args.out)
    save(report, args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
