"""Benchmark: training images/s of our engine vs a minimal plain PyTorch loop, same model/batch/data.

    .venv/bin/python bench/engine_throughput.py                 # CPU: resnet18 w0.25, 32 px
    .venv/bin/python bench/engine_throughput.py --device cuda   # resnet18 + resnet50, 224 px, AMP

Both loops train the same model object on the same in-memory dataset (uint8 images, the same
transform) through a DataLoader of the same batch size, alternating epoch by epoch so that machine
noise hits both alike; the table reports the median epoch of each and their ratio (goal >= 0.97:
the engine's bookkeeping — skip-counting collate, per-sample seeding, divergence check, device-side
sums — must cost under 3%). On CUDA both loops use bf16 autocast + channels_last + pinned memory.
Results are printed and saved to bench/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from importlib import resources
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.data import make_loader  # noqa: E402
from trainables.engine import autocast_for, train_one_epoch  # noqa: E402
from trainables.models import build_model  # noqa: E402

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


def plain_epoch(model, loader, optimizer, device) -> int:
    """The minimal loop every tutorial writes: the baseline."""
    model.train()
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
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


def print_row(row: dict) -> None:
    verdict = row.get("cpu_time_ratio", row["ratio"])
    extra = f"  cpu-time ratio {row['cpu_time_ratio']:.3f}" if "cpu_time_ratio" in row else ""
    print(f"{row['arch']:>10} w{row['width']:<5g} {row['image_size']:>4}px bs{row['batch_size']:<4} "
          f"engine {row['engine_images_per_s']:>9.1f} img/s  plain {row['plain_images_per_s']:>9.1f} img/s  "
          f"ratio {row['ratio']:.3f}{extra}  {'ok' if verdict >= GOAL else 'BELOW GOAL'} (goal >= {GOAL})",
          flush=True)


def cases(device: torch.device, args) -> list[dict]:
    if device.type == "cuda":
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per loop (after a warm-up)")
    parser.add_argument("--images", type=int, help="images per epoch (cpu 512, cuda 4096)")
    parser.add_argument("--batch", type=int, help="batch size (cpu 64, cuda 256)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (cpu 0, cuda 8)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for case in cases(device, args):
        rows.append(measure(device=device, repeats=args.repeats, **case))
        print_row(rows[-1])
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "goal_ratio": GOAL, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
