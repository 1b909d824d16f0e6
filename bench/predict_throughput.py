"""Benchmark: images/s of ``tuner predict``'s path: decode once, each member cuts its views, views batched.

    .venv/bin/python bench/predict_throughput.py                       # the defaults below, CPU
    .venv/bin/python bench/predict_throughput.py --device cuda --width 1.0 --image-size 224 --images 1000

What is timed is the real last-mile path, ``tuner.lastmile.predict.predict_folder`` (progress bar off),
from listing the test folder to the submission CSV written on disk, for:

* 1 model x 1 view (``--tta none``);
* 5 models x 12 views (``--tta twelve``), combined by the geometric mean;
* a naive baseline of the same 5 x 12: every member and every view decodes the batch's images again
  (``load_rgb_image`` + the member's ``view_transform``) and runs one forward pass of that one view
  (batch as given), then the same averaging, combination and CSV. It is what batching the views and
  decoding once buy. (To cut view v it cuts the batch's 12 views and keeps one: tensor slicing,
  flips and one resize, negligible next to the forward passes.) Its CSV is compared with
  predict_folder's: the share of ids with the same class is reported (float sums in other batch
  shapes may flip a near-tie, nothing more).

The models are real ``trainables.inference.Classifier``s loaded from checkpoints written here by
``trainables.models.build_model`` at RANDOM initialisation (seeds 0..4): throughput does not depend on
the weights, the predictions mean nothing. Each model's first call is warmed on a few images, untimed.

The images are real photos: the shipped CIFAR-10 sample's ``test/`` folder (``<id>.jpg``, 32 px JPEGs,
the first ``--images`` ids), which the eval transform upsamples to ``--image-size``. Decoding a 32 px
JPEG costs almost nothing, so on these images the naive baseline pays mostly for its smaller forward
batches, not for its 60 decodes per image. The repository has no larger real photos:
bench/loader_throughput.py uses stand-ins (the sample upscaled to 500-800 px with noise, "not real
photos"); ``--photos standins`` runs this benchmark on those to show the decode cost at photo size.

Rows run one after the other (``--rounds`` > 1: alternated round by round, each row's best round
kept). Peak RSS is the whole process's high-water mark (VmHWM, reset before each row; so it includes
torch and the loaded models), ``rss_at_start_mib`` what the process held when the row began, ``cpu_s``
the process's CPU seconds in the row (threads spinning in a parallel region count). Torch's thread
count is left at its default (``--threads`` sets it) and recorded: on a busy machine two threads make
small forward batches, the naive baseline's, far slower than one thread would, because each parallel
op waits for the descheduled thread. Defaults: resnet18 at full width, 64 px, 128 images, batch 64:
~3 minutes on 2 CPU cores under a load average of ~5 (about half that idle). Results: printed table and
bench/results/predict_throughput.json (the regenerating command under ``command``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import PIL
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainables.checkpoint import save_checkpoint  # noqa: E402
from trainables.config import TrialConfig  # noqa: E402
from trainables.data import load_rgb_image  # noqa: E402
from trainables.inference import load_classifier  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.tta import get_tta  # noqa: E402
from tuner.datasets.demo import unpack_demo_data  # noqa: E402
from tuner.lastmile.ensemble import Ensemble, Member, combine_probabilities  # noqa: E402
from tuner.lastmile.images import list_test_images  # noqa: E402
from tuner.lastmile.predict import pick_device, predict_folder, write_csv_atomically  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "predict_throughput.json"
MEMBERS = 5
WARMUP_IMAGES = 4
PHOTOS = {
    "sample": "the shipped CIFAR-10 sample's test/ folder (real photos, 32 px JPEGs), first N ids",
    "standins": "bench/loader_throughput.py's stand-ins: sample images upscaled bicubic to 500-800 px "
                "+ Gaussian noise sigma 6, JPEG q90 (NOT real photos)",
}
NAIVE = "naive: decode per member per view"
REAL = "predict_folder"


# --- images and models -------------------------------------------------------------------------

def sample_images(sample: Path, out: Path, count: int) -> int:
    """The first ``count`` test images of an unpacked sample (numeric id order) copied to ``out``."""
    items = list_test_images(sample / "test")[:count]
    out.mkdir(parents=True, exist_ok=True)
    for _, path in items:
        shutil.copy(path, out / path.name)
    return len(items)


def standin_images(out: Path, count: int) -> int:
    """The loader benchmark's large stand-ins, flattened to ``out/<1..count>.jpg``."""
    from bench.loader_throughput import make_photos  # only for --photos standins: pyarrow, noise

    with tempfile.TemporaryDirectory(prefix="standins-") as tmp:
        made = make_photos(Path(tmp), count)["count"]
        out.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(sorted(Path(tmp).rglob("*.jpg")), start=1):
            shutil.move(path, out / f"{index}.jpg")
    return made


def image_sides(folder: Path) -> tuple[float, float, float]:
    """Mean width, height (px) and file size (KiB) of the folder's images."""
    sizes = []
    for _, path in list_test_images(folder):
        with Image.open(path) as image:
            sizes.append((*image.size, path.stat().st_size / 1024))
    count = len(sizes)
    return tuple(round(sum(s[i] for s in sizes) / count, 1) for i in range(3))


def build_members(work: Path, sample: Path, *, count: int, arch: str, width: float, image_size: int,
                  device: str) -> list[Member]:
    """``count`` random-init classifiers, each saved as a checkpoint and loaded back as
    ``tuner predict`` loads one (config, class_to_idx, normalisation, model)."""
    classes = sorted(d.name for d in (sample / "train").iterdir() if d.is_dir())
    stats = json.loads((sample / "stats.json").read_text())
    config = TrialConfig.from_dict(dict(train_dir=str(sample / "train"), val_dir=str(sample / "val"),
                                        arch=arch, width=width, image_size=image_size, device=device))
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=len(classes), image_size=image_size, width=width)
        checkpoint = save_checkpoint(work / f"model-{seed}", config=config.to_dict(),
                                     class_to_idx={name: i for i, name in enumerate(classes)},
                                     model=model.state_dict(),
                                     normalisation={"mean": stats["mean"], "std": stats["std"]})
        members.append(Member(load_classifier(checkpoint, device=device), trial=f"random-{seed}",
                              checkpoint=str(checkpoint), arch=arch))
    return members


# --- the naive baseline ------------------------------------------------------------------------

@torch.no_grad()
def naive_predict_folder(model: Ensemble, images_dir: Path, out: Path, *, batch_size: int,
                         tta: str) -> int:
    """predict_folder's answer the naive way: per batch, per member, per view, decode the images
    again and run that one view through the model. Returns the rows written."""
    views_of, views = get_tta(tta), view_count(tta)
    items = list_test_images(images_dir)
    rows: list[tuple[str, str]] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        member_probs = []
        for member in model.members:
            classifier = member.classifier
            device = next(classifier.model.parameters()).device
            transform = classifier.view_transform(tta)
            per_view = []
            for view in range(views):
                base = torch.stack([transform(load_rgb_image(path)) for _, path in batch]).to(device)
                image = views_of.views(base, classifier.config.image_size)[view]
                per_view.append(classifier.model(image).float().softmax(dim=1).cpu())
            member_probs.append(torch.stack(per_view).mean(dim=0))
        combined = combine_probabilities(torch.stack(member_probs), model.weights, model.combine)
        rows.extend((image_id, model.class_names[c])
                    for (image_id, _), c in zip(batch, combined.argmax(dim=1).tolist()))
    write_csv_atomically(out, rows)
    return len(rows)


def view_count(tta: str) -> int:
    return len(get_tta(tta).views(torch.zeros(1, 3, 64, 64), 32))


# --- measuring ---------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Resets the process's RSS high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> Optional[float]:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(run: Callable[[], int], device: str) -> dict:
    """One timed call: seconds, images written, peak RSS (and CUDA memory) during it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    at_start = rss_mib()
    began, cpu_began = time.perf_counter(), time.process_time()
    images = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds, cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
    result = {"seconds": seconds, "cpu_s": cpu_s, "images": images,
              "peak_rss_mib": round(peak_rss_mib(), 1),
              "rss_at_start_mib": None if at_start is None else round(at_start, 1)}
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def read_predictions(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        return {row["id"]: row["predicted"] for row in csv.DictReader(handle)}


def run(args: argparse.Namespace, work: Path) -> dict:
    device = pick_device(args.device)
    if args.sample is None:
        sample = work / "sample"
        unpack_demo_data(sample)
    else:
        sample = Path(args.sample)
    images_dir, warm_dir = work / "images", work / "warmup"
    if args.photos == "sample":
        count = sample_images(sample, images_dir, args.images)
        sample_images(sample, warm_dir, WARMUP_IMAGES)
    else:
        count = standin_images(images_dir, args.images)
        standin_images(warm_dir, WARMUP_IMAGES)
    width_px, height_px, kib = image_sides(images_dir)

    members = build_members(work / "models", sample, count=MEMBERS, arch=args.arch, width=args.width,
                            image_size=args.image_size, device=device)
    one = Ensemble(members[:1])
    five = Ensemble(members)
    csv_dir = Path(args.csv_dir) if args.csv_dir else work
    csvs = {REAL + " 1": csv_dir / "one_model_one_view.csv",
            REAL + " 5": csv_dir / "five_models_twelve_views.csv",
            NAIVE: csv_dir / "naive_five_models_twelve_views.csv"}
    calls: dict[str, tuple[Callable[[Path, Path], int], int, str]] = {
        REAL + " 1": (lambda folder, out: predict_folder(one, folder, out, batch_size=args.batch_size,
                                                         tta="none", progress=False).written, 1, "none"),
        REAL + " 5": (lambda folder, out: predict_folder(five, folder, out, batch_size=args.batch_size,
                                                         tta="twelve", progress=False).written,
                      MEMBERS, "twelve"),
        NAIVE: (lambda folder, out: naive_predict_folder(five, folder, out, batch_size=args.batch_size,
                                                         tta="twelve"), MEMBERS, "twelve"),
    }
    for name, (call, _, _) in calls.items():  # first calls (allocator, kernels, CUDA context): untimed
        call(warm_dir, work / "warmup.csv")

    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, (call, _, _) in calls.items():
            rounds[name].append(timed(lambda: call(images_dir, csvs[name]), device))
    load_after = os.getloadavg()[0]

    def row(name: str) -> dict:
        _, models, tta = calls[name]
        best = min(rounds[name], key=lambda r: r["seconds"])
        views = view_count(tta)
        seconds = round(best["seconds"], 4)
        return {"path": REAL if name.startswith(REAL) else NAIVE, "models": models, "tta": tta,
                "views": views, "forwards_per_image": models * views,
                "decodes_per_image": 1 if name.startswith(REAL) else models * views,
                "images": best["images"], "seconds": seconds,
                "images_per_s": round(best["images"] / seconds, 2),  # of the seconds as saved
                "cpu_s": round(best["cpu_s"], 2),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds[name]),
                "rss_at_start_mib": best["rss_at_start_mib"],
                **({"peak_cuda_mib": max(r["peak_cuda_mib"] for r in rounds[name])}
                   if "peak_cuda_mib" in best else {}),
                "rounds_seconds": [round(r["seconds"], 3) for r in rounds[name]]}

    rows = [row(REAL + " 1"), row(REAL + " 5")]
    naive = row(NAIVE)
    real_predictions, naive_predictions = read_predictions(csvs[REAL + " 5"]), read_predictions(csvs[NAIVE])
    agree = sum(naive_predictions.get(i) == c for i, c in real_predictions.items()) / len(real_predictions)
    return {
        "benchmark": "predict_throughput",
        "rows": rows,
        "naive_row": naive,
        "one_model_one_view_img_s": rows[0]["images_per_s"],
        "five_models_twelve_views_img_s": rows[1]["images_per_s"],
        "naive_five_models_twelve_views_img_s": naive["images_per_s"],
        "speedup_vs_naive": round(naive["seconds"] / rows[1]["seconds"], 2),
        "naive_same_class_share": round(agree, 4),
        "csv_rows": {"one_model_one_view": len(read_predictions(csvs[REAL + " 1"])),
                     "five_models_twelve_views": len(real_predictions),
                     "naive": len(naive_predictions)},
        "photos": {"set": args.photos, "how": PHOTOS[args.photos], "count": count,
                   "mean_width": width_px, "mean_height": height_px, "mean_jpeg_kib": kib},
        "models": {"arch": args.arch, "width": args.width, "image_size": args.image_size,
                   "members": MEMBERS, "combine": five.combine, "weights": "random init (seeds 0-4): "
                   "throughput only, the predictions mean nothing",
                   "parameters": sum(p.numel() for p in members[0].classifier.model.parameters())},
        "settings": {"device": device, "batch_size": args.batch_size, "rounds": args.rounds,
                     "warmup_images": WARMUP_IMAGES, "progress": False,
                     "chunk": "Classifier.probabilities default (512 images per forward)",
                     "naive_forward_batch": "batch_size (one view of one member per forward)",
                     "peak_rss": "VmHWM reset before each row: the whole process's peak during it"},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch_threads_set_by": "--threads" if args.threads is not None else "torch's default",
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torchvision": torchvision.__version__,
                    "pillow": PIL.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
                    "load_average_1m_before": round(load_before, 2),
                    "load_average_1m_after": round(load_after, 2),
                    "niceness": os.nice(0)},
    }


def print_table(result: dict) -> None:
    models, photos, settings = result["models"], result["photos"], result["settings"]
    machine = result["machine"]
    print(f"\npredict throughput: {models['arch']} width {models['width']} at {models['image_size']} px "
          f"({models['weights']}), {settings['device']}, batch {settings['batch_size']}, "
          f"{machine['torch_threads']} torch threads")
    print(f"{photos['count']} photos ~{photos['mean_width']:.0f}x{photos['mean_height']:.0f} px, "
          f"{photos['mean_jpeg_kib']:.1f} KiB: {photos['how']}")
    header = (f"{'path':<36} {'models':>6} {'tta':<7} {'views':>5} {'decodes/img':>11} {'images':>6} "
              f"{'seconds':>8} {'images/s':>9} {'peak RSS MiB':>12}")
    print(header)
    for row in [*result["rows"], result["naive_row"]]:
        print(f"{row['path']:<36} {row['models']:>6} {row['tta']:<7} {row['views']:>5} "
              f"{row['decodes_per_image']:>11} {row['images']:>6} {row['seconds']:>8.2f} "
              f"{row['images_per_s']:>9.2f} {row['peak_rss_mib']:>12.1f}")
    print(f"5 x 12 views: predict_folder is {result['speedup_vs_naive']}x the naive baseline "
          f"(same class for {result['naive_same_class_share']:.1%} of the ids)")
    print(f"1-minute load average: {machine['load_average_1m_before']} before, "
          f"{machine['load_average_1m_after']} after, on {machine['cpus']} CPUs")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the backbone")
    parser.add_argument("--image-size", type=int, default=64, help="the models' input side (px)")
    parser.add_argument("--images", type=int, default=128, help="test images (the sample has 1,000)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own default, left alone)")
    parser.add_argument("--rounds", type=int, default=1, help="timed passes per row; the best is kept")
    parser.add_argument("--photos", choices=sorted(PHOTOS), default="sample",
                        help="sample: the shipped real photos; standins: the loader bench's large "
                             "stand-ins")
    parser.add_argument("--sample", default=None,
                        help="an already unpacked sample (tuner data demo --out DIR); default: unpack "
                             "one into a temporary folder")
    parser.add_argument("--csv-dir", default=None,
                        help="keep the submission CSVs here (default: a temporary folder, deleted)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--images, --rounds and --threads must be >= 1")
    started, threads = time.perf_counter(), torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="predict-bench-") as scratch:
            result = run(args, Path(scratch))
    finally:
        torch.set_num_threads(threads)  # main() may run inside a test process
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/predict_throughput.py", *(sys.argv[1:] if argv is None else argv)])
    out.write_text(json.dumps({"command": command, **result}, indent=1) + "\n")
    print(f"whole benchmark: {result['wall_s']} s; saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
