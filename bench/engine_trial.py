"""The pieces of ``engine_throughput.py --source cache``: photos in a decoded-image cache, a real
trial configuration, batch sizes from ``tuner diagnose batch-size``'s probe, and a GPU-busy meter.

* Data: photos (real ones with ``--photos``, else stand-ins: ``photo_sets``) repeated into an
  ImageFolder ``train/`` tree of at least the epoch's images, cached once by ``build_cache`` (on the
  GPU when there is one), so a trial reads uint8 pixels from the memory-mapped cache, never files.
* The trial: a ``TrialConfig`` of the kind a search on photos runs (rrc augmentation, SGD with
  nesterov, onecycle per batch, label smoothing, ``cache: auto``, DataLoader workers, and
  ``compile``); ``TrialState`` builds everything from it exactly as a trial does (channels_last,
  cudnn.benchmark, TF32, pinned memory, persistent workers, per-sample seeding, torch.compile).
* Batch sizes: ``tuner.diagnose.batch_size.probe_candidate``, the probe behind
  ``tuner diagnose batch-size``: one real training step per candidate batch (doubling, then
  bisection) against the device's memory less 10% (CUDA: the allocator's peak; CPU: the counted
  saved tensors against 2 GiB), capped at ``--max-batch``.
* GPU busy: NVML's ``utilization.gpu`` read through ``torch.cuda.utilization`` every 0.1 s by a
  thread while an epoch runs; the mean of the readings. NVML reports the share of its last sample
  period (1/6 s to 1 s, by card) during which at least one kernel ran: a GPU waiting for the loader
  reads low; it does not say how many SMs a kernel kept busy.
"""

from __future__ import annotations

import os
import statistics
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from bench.photo_sets import image_folder, photo_source
from trainables.config import TrialConfig
from trainables.gpu_decode import usable_gpu_decoder
from tuner.datasets.cache import build_cache
from tuner.diagnose.batch_size import Candidate, card_memory, probe_candidate
from tuner.diagnose.memory import GiB, ProbeSettings

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PROBE_MARGIN = 0.10  # tuner diagnose batch-size's default margin
CPU_PROBE_BUDGET = 2 * GiB  # ... and its default CPU budget
BUSY_HOW = ("NVML utilization.gpu via torch.cuda.utilization, sampled every 0.1 s by a thread during "
            "each epoch; per row the median over the timed epochs of each epoch's mean reading "
            "(% of time at least one kernel ran)")
ROW_HOW = {
    "images_per_s": "median over the timed epochs (each loop warmed up by one epoch first) of the "
                    "epoch's images / its wall seconds, the device synchronised before and after",
    "ratio": "engine median / plain median: the engine's bookkeeping must cost < 3% (goal >= 0.97)",
    "warmup_epoch_s": "wall seconds of each loop's first epoch: loader workers, cudnn autotuning and, "
                      "in compile rows, torch.compile's compilation (the plain loop runs first: it pays it)",
    "gpu_busy_pct": BUSY_HOW,
    "max_memory": "torch.cuda.max_memory_allocated / max_memory_reserved over the row, both loops, bytes",
    "batch_size": "the default (cuda 256, cpu 32) and the largest of the batch-size probe",
}


def cached_photos(photos: Optional[Path], work: Path, *, images: int, cache_size: int,
                  device: torch.device, max_photos: Optional[int] = None) -> dict:
    """``work/data/{train,val}`` trees of the photos (train repeated to ``images``), train cached."""
    files, described = photo_source(photos, work, max_photos)
    train = image_folder(files, work / "data" / "train", at_least=images)
    val = image_folder(files, work / "data" / "val")  # listed by the trial, never read here
    decoder = usable_gpu_decoder(str(device)) if device.type == "cuda" else None
    # A CPU run is the tiny test setting: worker processes would cost more to start than they save.
    workers = (os.cpu_count() or 1) if device.type == "cuda" else 1
    built = build_cache(train, size=cache_size, workers=workers, progress=False, decode_device=decoder)
    return {"train_dir": str(train), "val_dir": str(val), "photos": described,
            "cache": {"images": built.images, "size": cache_size, "seconds": round(built.seconds, 2),
                      "decoded_on": built.decoded_on, "unreadable": built.unreadable,
                      "MiB": round(built.nbytes / 2**20, 1)}}


def probe_batch_size(arch: str, width: float, image_size: int, classes: int, device: torch.device,
                     cap: int) -> dict:
    """``tuner diagnose batch-size``'s answer for one model (see the module docstring)."""
    cuda = device.type == "cuda"
    limit = torch.cuda.get_device_properties(device).total_memory if cuda else CPU_PROBE_BUDGET
    settings = ProbeSettings(device=device, measure="cuda-peak" if cuda else "saved-tensors",
                             limit_bytes=limit, margin=PROBE_MARGIN, image_size=image_size,
                             num_classes=classes, optimizer="sgd", max_batch=cap)
    result = asdict(probe_candidate(Candidate(arch, width), settings))
    # The card's memory and the process's CUDA context, as the spec's GPU-share check reads them.
    return {**result, **card_memory(device), "measure": settings.measure, "limit_bytes": limit,
            "margin": PROBE_MARGIN,
            "how": "tuner.diagnose.batch_size.probe_candidate (tuner diagnose batch-size), capped"}


def trial_config(data: dict, *, arch: str, width: float, image_size: int, batch: int, workers: int,
                 compile: bool, steps: int, device: torch.device) -> TrialConfig:
    """A trial as a search on photos runs one (module docstring); ``steps`` batches per epoch."""
    return TrialConfig(
        train_dir=data["train_dir"], val_dir=data["val_dir"], image_size=image_size, arch=arch,
        width=width, batch_size=batch, num_workers=workers, compile=compile, device=str(device),
        augmentation="rrc", optimizer="sgd", nesterov=True, lr=0.1, schedule="onecycle",
        label_smoothing=0.1, epochs=1000, max_steps_per_epoch=steps, cache="auto",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0)


def memory_of(device: torch.device) -> dict:
    """The CUDA caching allocator's peaks since the last reset (bytes); {} on CPU."""
    if device.type != "cuda":
        return {}
    return {"max_memory_allocated": torch.cuda.max_memory_allocated(device),
            "max_memory_reserved": torch.cuda.max_memory_reserved(device)}


class BusySampler:
    """``with sampler:`` around a timed block; ``sampler.readings`` then holds its NVML readings
    (module docstring). Off (``error`` says why) on CPU or without NVML's Python bindings."""

    def __init__(self, device: torch.device, interval_s: float = 0.1) -> None:
        self.device, self.interval_s = device, interval_s
        self.readings: list[int] = []
        self.error = self._unavailable()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _unavailable(self) -> Optional[str]:
        if self.device.type != "cuda":
            return "no GPU"
        try:
            torch.cuda.utilization(self.device)
        except Exception as err:  # no pynvml / amdsmi, or NVML refused: say so in the JSON
            return f"{type(err).__name__}: {err}"
        return None

    def __enter__(self) -> "BusySampler":
        self.readings, self._stop = [], threading.Event()
        if self.error is None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.readings.append(int(torch.cuda.utilization(self.device)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> Optional[float]:
        return round(statistics.mean(self.readings), 1) if self.readings else None
