"""Benchmark: JPEG decoding with torchvision's decode_jpeg on a device (nvjpeg on CUDA) vs Pillow.

    python bench/gpu_decode.py --device cuda --photos bench/photos   # on a GPU machine (gpu_check.sh)
    python bench/gpu_decode.py --device cpu                          # tiny: the batched path on CPU

Every rate is images per second of wall time, synchronised with the device, best of ``--rounds``
passes over the photos, the page cache warm (every file read once first):

* ``pil_full_decode``: ``load_rgb_image`` per file in this one process (tuner predict's CPU path);
* ``device_decode_call``: ``decode_jpeg(64 in-memory byte tensors, device)`` only: the decoder;
* ``device_decode_files``: ``gpu_decode.decode_jpegs``: files read, headers checked, decoded, upright;
* ``predict_batches_cpu`` / ``_device``: ``tuner.lastmile.images.decoded_batches`` (batch 64)
  without / with the device: what tuner predict and evaluate pay per image before the models;
* ``cache_build_cpu``: ``tuner data cache --decode-device cpu --workers N`` run as the command
  (its Pillow worker processes start as they do for a user), on the photos repeated to
  ``--cache-images``; ``cache_build_device``: ``build_cache(decode_device=device)`` in this process
  on the same images. Both rates come from the build's own clock (``build_seconds`` in the
  manifest: listing excluded, worker start-up included).

``cache_equal`` compares those two caches pixel by pixel (absolute differences in grey levels:
mean, 99th percentile, max), and again at a small size (``--small-size``), where Pillow's
reduced-scale decoding (draft) matters most, on the photos once. Results: a printed table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.photo_sets import image_folder, photo_source  # noqa: E402
from torchvision.io import ImageReadMode, decode_jpeg  # noqa: E402

from trainables.cache import cache_paths, read_metadata  # noqa: E402
from trainables.data import load_rgb_image  # noqa: E402
from trainables.gpu_decode import DEVICE_BATCH, decode_jpegs, jpeg_orientation  # noqa: E402
from tuner.datasets.cache import build_cache  # noqa: E402
from tuner.lastmile.images import decoded_batches  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "gpu_decode.json"
# A GPU cache "equals" the CPU one when its mean difference is under a grey level and 99% of the
# values are within 4 (JPEG decoder rounding; resize kernels agree within 1): what CPU tests assert.
TOLERANCE = {"mean_abs": 1.0, "p99_abs": 4.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(run: Callable[[], int], device: torch.device, rounds: int) -> dict:
    """Best images/s of ``rounds`` timed calls of ``run`` (which returns the images it handled)."""
    rates = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        images = run()
        sync(device)
        rates.append(images / (time.perf_counter() - start))
    return {"images_per_s": round(max(rates), 1), "rounds": [round(r, 1) for r in rates],
            "images": images}


def decoder_rows(files: list[Path], device: torch.device, rounds: int) -> dict:
    """The decoding rows of the module docstring, on ``files``."""
    contents = [path.read_bytes() for path in files]
    datas = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in contents
             if jpeg_orientation(data) is not None]  # the JPEGs decode_jpegs would send

    def pil() -> int:
        return sum(1 for path in files if load_rgb_image(path) is not None)

    def call() -> int:
        return sum(len(decode_jpeg(datas[i : i + DEVICE_BATCH], mode=ImageReadMode.RGB, device=device))
                   for i in range(0, len(datas), DEVICE_BATCH))

    def from_files() -> int:
        return sum(image is not None for i in range(0, len(files), DEVICE_BATCH)
                   for image in decode_jpegs(files[i : i + DEVICE_BATCH], device))

    def batches(on: torch.device | None) -> Callable[[], int]:
        return lambda: sum(len(positions) for positions, _, _ in decoded_batches(files, 64, on))

    call()  # warm-up, untimed: CUDA's lazy start, nvjpeg's handle and buffers, the allocator
    how = {"pil_full_decode": "trainables.data.load_rgb_image per file, this process (1 thread)",
           "device_decode_call": f"decode_jpeg(list of {DEVICE_BATCH} in-memory JPEGs, {device}), "
                                 "synchronised; JPEGs only",
           "device_decode_files": f"trainables.gpu_decode.decode_jpegs in batches of {DEVICE_BATCH}: "
                                  "read + header check + decode + upright",
           "predict_batches_cpu": "tuner.lastmile.images.decoded_batches(batch 64), Pillow",
           "predict_batches_device": f"decoded_batches(batch 64, device={device})"}
    runs = {"pil_full_decode": pil, "device_decode_call": call, "device_decode_files": from_files,
            "predict_batches_cpu": batches(None), "predict_batches_device": batches(device)}
    return {name: {**rate(run, device, rounds), "how": how[name]} for name, run in runs.items()}


def cli_cache_build(folder: Path, size: int, workers: int) -> dict:
    """``tuner data cache`` (Pillow, ``workers`` processes) as a user runs it; its own build clock."""
    command = [sys.executable, "-m", "tuner.cli", "data", "cache", str(folder), "--size", str(size),
               "--workers", str(workers), "--decode-device", "cpu", "--force", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    meta = read_metadata(cache_paths(folder, size).manifest)
    return {"images": meta["count"], "build_seconds": meta["build_seconds"], "command_wall_s": round(wall, 2),
            "images_per_s": round(meta["count"] / meta["build_seconds"], 1), "workers": workers,
            "how": "tuner data cache --decode-device cpu (subprocess); rate = count / build_seconds"}


def device_cache_build(folder: Path, size: int, device: torch.device) -> dict:
    result = build_cache(folder, size=size, progress=False, force=True, decode_device=device)
    return {"images": result.images, "build_seconds": round(result.seconds, 3),
            "images_per_s": round(result.images / result.seconds, 1), "decoded_on": result.decoded_on,
            "how": f"build_cache(decode_device={device}) in this process; rate = count / build seconds"}


def compare(cpu_pixels: Path, device_pixels: Path) -> dict:
    """Absolute pixel differences of two caches, in grey levels, and the verdict against TOLERANCE."""
    diff = np.abs(np.load(cpu_pixels).astype(np.int16) - np.load(device_pixels).astype(np.int16))
    row = {"mean_abs": round(float(diff.mean()), 4), "p99_abs": float(np.percentile(diff, 99)),
           "p999_abs": float(np.percentile(diff, 99.9)), "max_abs": int(diff.max()),
           "values": int(diff.size)}
    row["within_tolerance"] = all(row[k] <= limit for k, limit in TOLERANCE.items())
    row["how"] = "|CPU cache - device cache| over every stored uint8 value (grey levels)"
    return row


def cache_rows(files: list[Path], work: Path, args, device: torch.device) -> dict:
    """The two timed builds of the same images, their comparison, and the small-size comparison."""
    trees = {name: image_folder(files, work / name / "train", at_least=args.cache_images)
             for name in ("cpu", "device")}
    cpu = cli_cache_build(trees["cpu"], args.cache_size, args.workers)
    dev = device_cache_build(trees["device"], args.cache_size, device)
    equal = compare(work / "cpu" / ".cache" / f"train_{args.cache_size}.npy",
                    work / "device" / ".cache" / f"train_{args.cache_size}.npy")
    small = {}
    for name in ("small_cpu", "small_device"):
        tree = image_folder(files, work / name / "train")
        on = device if name == "small_device" else None
        small[name] = build_cache(tree, size=args.small_size, workers=1, progress=False, decode_device=on)
    return {"cache_build_cpu": cpu, "cache_build_device": dev,
            "cache_equal": {**equal, "size": args.cache_size, "fit": "squash"},
            "cache_equal_small": {**compare(small["small_cpu"].pixels, small["small_device"].pixels),
                                  "size": args.small_size, "fit": "squash"},
            "tolerance": TOLERANCE}


def run(args, work: Path) -> dict:
    device = torch.device(args.device)
    files, photos = photo_source(args.photos, work, args.images)
    for path in files:  # warm the page cache: this measures decoding, not the disk
        path.read_bytes()
    result = {"benchmark": "gpu_decode", "device": str(device), "photos": photos}
    result["rows"] = decoder_rows(files, device, args.rounds)
    result.update(cache_rows(files, work, args, device))
    result["speedups"] = speedups(result)
    result["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "python": platform.python_version()}
    return result


def speedups(result: dict) -> dict:
    rows = result["rows"]
    return {"decode_files_vs_pil": round(rows["device_decode_files"]["images_per_s"]
                                         / rows["pil_full_decode"]["images_per_s"], 2),
            "predict_batches_device_vs_cpu": round(rows["predict_batches_device"]["images_per_s"]
                                                   / rows["predict_batches_cpu"]["images_per_s"], 2),
            "cache_build_device_vs_cpu": round(result["cache_build_device"]["images_per_s"]
                                               / result["cache_build_cpu"]["images_per_s"], 2)}


def print_table(result: dict) -> None:
    photos = result["photos"]
    print(f"\ndecoding on {result['device']}: {photos['count']} {photos['kind']} photos "
          f"~{photos['mean_width']:.0f}x{photos['mean_height']:.0f} px, {photos['mean_kib']:.0f} KiB")
    for name, row in {**result["rows"], "cache_build_cpu": result["cache_build_cpu"],
                      "cache_build_device": result["cache_build_device"]}.items():
        print(f"{name:<24} {row['images_per_s']:>10.1f} img/s   {row['how']}")
    for name in ("cache_equal", "cache_equal_small"):
        row = result[name]
        print(f"{name:<24} {row['size']:>4} px: mean |diff| {row['mean_abs']:.3f}, p99 {row['p99_abs']:g}, "
              f"max {row['max_abs']} grey levels ({'within' if row['within_tolerance'] else 'OUTSIDE'} "
              f"tolerance {TOLERANCE})")
    print("speedups:", result["speedups"], flush=True)


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cuda (nvjpeg) or cpu (the same list API)")
    parser.add_argument("--photos", type=Path, help="folder of real photos (default: stand-ins)")
    parser.add_argument("--images", type=int, help="at most this many photos (default: all / 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-size", type=int, default=224, help="side of the timed cache builds")
    parser.add_argument("--cache-images", type=int, default=4000, help="photos repeated to this many")
    parser.add_argument("--small-size", type=int, default=32, help="side of the second comparison")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CPU build processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible")
    with tempfile.TemporaryDirectory(prefix="gpu-decode-") as tmp:
        result = run(args, Path(tmp))
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
