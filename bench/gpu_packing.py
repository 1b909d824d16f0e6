"""Benchmark: N trial processes sharing one GPU (N = 1, 2, 4): aggregate and per-trial images/s and
each process's GPU memory, for resnet18 at 224 px and for the shipped demo's tiny models.

    python bench/gpu_packing.py --device cuda              # on a GPU machine (gpu_check.sh runs it)
    python bench/gpu_packing.py --device cpu               # tiny: the same code on CPU processes

What a search with ``resources: {gpu: 1/N}`` does to a GPU, without Ray: N processes started with
``multiprocessing`` (spawn), each training its own model with the real engine
(``trainables.engine.train_one_epoch``: bf16 autocast, channels_last, device-side sums, the
divergence check) on its own data. The data are synthetic uint8 images of the model's size,
converted and normalised once into a few pinned float batches that every epoch cycles through, as
a trial's loader delivers them: the question here is how N trials share the GPU, so decoding and
augmentation, which engine_throughput.py --source cache measures, are left out (the host-to-device
copy of every batch is not: it is part of each step).

For each model, every process builds it, trains ``--warmup`` untimed steps (cudnn autotuning, the
allocator), waits at a barrier with the others, then trains for ``--seconds`` of wall time; its
images/s is images / its own elapsed time (synchronised). The aggregate is the sum over the N
processes, which all ran over the same window. Memory per process: the CUDA caching allocator's
peaks (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``) of that process and model,
which leave out its CUDA context (~0.5 GiB, not the allocator's); ``device_used_bytes`` is the
card's used memory (``torch.cuda.mem_get_info``) read by the first process at the end of the window,
every process's context included. Results: a printed table and JSON (saved after each N).

The models (``--models``): resnet18 at 224 px (batch 256) and the demo's search space
(search_spaces/demo.yaml: resnet18 at width 0.125 and 0.25, 32 px, batch 64 / 128).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import queue
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainables.data import Batch  # noqa: E402
from trainables.engine import train_one_epoch  # noqa: E402
from trainables.models import build_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu_packing.json"
CUDA_MODELS = "resnet18:1.0:224:256,resnet18:0.25:32:128,resnet18:0.125:32:64"
CPU_MODELS = "resnet18:0.125:32:16"
BATCHES_PER_EPOCH = 4  # distinct pinned batches a process cycles through
CLASSES = 10
BARRIER_TIMEOUT_S = 300  # a process that never arrives (it crashed) breaks the barrier, not the run


def parse_models(text: str) -> list[dict]:
    models = []
    for item in text.split(","):
        arch, width, size, batch = item.split(":")
        models.append({"arch": arch, "width": float(width), "image_size": int(size), "batch": int(batch)})
    return models


def label(model: dict) -> str:
    return f"{model['arch']} w{model['width']:g} {model['image_size']}px bs{model['batch']}"


def synthetic_batches(model: dict, device: torch.device, seed: int) -> list[Batch]:
    """A few batches as a trial's loader yields them: uint8 pixels made float and normalised, pinned."""
    generator = torch.Generator().manual_seed(seed)
    size, batch = model["image_size"], model["batch"]
    out = []
    for _ in range(BATCHES_PER_EPOCH):
        pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
        images = (pixels.float() / 255 - 0.45) / 0.25
        labels = torch.randint(0, CLASSES, (batch,), generator=generator)
        if device.type == "cuda":
            images = images.pin_memory()
        out.append(Batch(images, labels, torch.arange(batch), 0))
    return out


def train_window(model: dict, device: torch.device, seconds: float, warmup: int, barrier, rank: int) -> dict:
    """One process's part for one model: build, warm up, wait for the others, train ``seconds``."""
    torch.manual_seed(rank)
    net = build_model(model["arch"], num_classes=CLASSES, image_size=model["image_size"],
                      width=model["width"]).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    batches = synthetic_batches(model, device, seed=rank)
    train_one_epoch(net, batches * max(1, warmup // BATCHES_PER_EPOCH), optimizer, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier.wait(BARRIER_TIMEOUT_S)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images += train_one_epoch(net, batches, optimizer, device).images  # synchronises at its end
    elapsed = time.perf_counter() - start
    row = {"rank": rank, "model": label(model), "images": images, "seconds": round(elapsed, 3),
           "images_per_s": round(images / elapsed, 1)}
    if device.type == "cuda":
        row.update(max_memory_allocated=torch.cuda.max_memory_allocated(device),
                   max_memory_reserved=torch.cuda.max_memory_reserved(device))
        if rank == 0:
            free, total = torch.cuda.mem_get_info(device)
            row["device_used_bytes"] = total - free
    barrier.wait(BARRIER_TIMEOUT_S)  # nobody starts the next model while another still trains
    del net, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def worker(rank: int, device_name: str, models: list[dict], seconds: float, warmup: int, threads: int,
           barrier, results) -> None:
    """A spawned trial process: every model in turn, one row each (or the error) on ``results``."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    for model in models:
        try:
            results.put(train_window(model, device, seconds, warmup, barrier, rank))
        except Exception as err:  # OOM, a broken barrier: reported, the parent records it
            results.put({"rank": rank, "model": label(model), "error": f"{type(err).__name__}: {err}"})
            barrier.abort()
            return


def run_packing(n: int, args, models: list[dict]) -> list[dict]:
    """N processes over all models; the rows they report, in the order they arrive."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into a child
    barrier, results = context.Barrier(n), context.Queue()
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = [context.Process(target=worker, daemon=True,
                             args=(rank, args.device, models, args.seconds, args.warmup, threads,
                                   barrier, results)) for rank in range(n)]
    for proc in procs:
        proc.start()
    rows, deadline = [], time.monotonic() + args.round_timeout
    while len(rows) < n * len(models) and time.monotonic() < deadline:
        try:
            rows.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs):
                break
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    return rows


def summarise(n: int, models: list[dict], rows: list[dict]) -> list[dict]:
    """One entry per model at this N: aggregate and per-trial images/s, memory per process."""
    out = []
    for model in models:
        mine = [r for r in rows if r["model"] == label(model)]
        ok = [r for r in mine if "error" not in r]
        entry = {"processes": n, "model": label(model), **model,
                 "per_process": sorted(mine, key=lambda r: r["rank"])}
        if len(ok) == n:
            rates = [r["images_per_s"] for r in ok]
            entry.update(aggregate_images_per_s=round(sum(rates), 1),
                         per_trial_images_per_s_mean=round(sum(rates) / n, 1),
                         per_trial_images_per_s_min=min(rates))
        else:
            entry["error"] = next((r["error"] for r in mine if "error" in r),
                                  f"{len(ok)} of {n} processes reported")
        out.append(entry)
    return out


def scaling(entries: list[dict]) -> dict:
    """Aggregate images/s at each N over N = 1's, per model: what packing buys."""
    table: dict[str, dict] = {}
    for entry in entries:
        if "aggregate_images_per_s" in entry:
            table.setdefault(entry["model"], {})[entry["processes"]] = entry["aggregate_images_per_s"]
    return {model: {str(n): round(rate / by_n[1], 2) for n, rate in by_n.items()}
            for model, by_n in table.items() if 1 in by_n}


def print_table(entries: list[dict]) -> None:
    print(f"\n{'model':<30} {'N':>2} {'aggregate img/s':>16} {'per trial (mean)':>17} {'reserved/proc':>14}")
    for e in entries:
        reserved = max((r.get("max_memory_reserved", 0) for r in e["per_process"]), default=0)
        if "error" in e:
            print(f"{e['model']:<30} {e['processes']:>2}  ERROR {e['error']}")
            continue
        print(f"{e['model']:<30} {e['processes']:>2} {e['aggregate_images_per_s']:>16.1f} "
              f"{e['per_trial_images_per_s_mean']:>17.1f} {reserved / 2**30:>11.2f} GiB", flush=True)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cuda or cpu (tiny settings)")
    parser.add_argument("--procs", help="process counts, comma-separated (cuda 1,2,4; cpu 1,2)")
    parser.add_argument("--models", help=f"arch:width:size:batch,... (cuda {CUDA_MODELS}; cpu {CPU_MODELS})")
    parser.add_argument("--seconds", type=float, help="timed window per model (cuda 6, cpu 1.5)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (cuda 16, cpu 4)")
    parser.add_argument("--round-timeout", type=float, default=240, help="seconds for one N, all models")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.procs = [int(n) for n in (args.procs or ("1,2,4" if cuda else "1,2")).split(",")]
    args.models = args.models or (CUDA_MODELS if cuda else CPU_MODELS)
    args.seconds = args.seconds or (6.0 if cuda else 1.5)
    args.warmup = args.warmup or (16 if cuda else 4)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    models = parse_models(args.models)
    report = {"benchmark": "gpu_packing", "device": args.device, "seconds": args.seconds,
              "warmup_steps": args.warmup, "how": " ".join(__doc__.split("\n\n")[2:4]).replace("\n", " "),
              "data": "synthetic uint8 -> normalised float, pinned, cycled; no decoding or augmentation",
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
              "entries": []}
    for n in args.procs:
        start = time.perf_counter()
        report["entries"] += summarise(n, models, run_packing(n, args, models))
        report.setdefault("round_seconds", {})[str(n)] = round(time.perf_counter() - start, 1)
        report["scaling_vs_one_process"] = scaling(report["entries"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report["entries"])
    print("aggregate img/s over N = 1:", report["scaling_vs_one_process"])
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
