"""``tuner predict``: a promoted model (a trial or an ensemble) or a checkpoint -> a Kaggle submission
CSV ``id,predicted``.

Ids come from the file names (``123.jpg`` -> 123); rows follow numeric id order. ``predicted`` is the
class name the training folders used (for the competition: its label id). Test-time augmentation
averages each model's softmax over its views (``trainables.tta``: ``flips``, ``crops``, ``five-crop``,
``ten-crop``, ``multi-scale``, ``twelve``); an ensemble then combines its members (``ensemble.py``)
and applies its calibration. Each image is decoded once per batch, whatever the number of views and
members; a batch bounds the memory. A file that is not a readable image is skipped, counted and
named by id; the CSV is written to a temporary name and renamed, so a failed run never leaves half a
submission. ``--decode-device`` (``pick_decode_device``): by default a model on a GPU gets its JPEGs
decoded there in batches (``images.decoded_batches``); ``cpu`` keeps Pillow.

Only checkpoints (``torch.load(weights_only=True)``) and JSON cards are read (``loading.py``); a
model's Python code is never run, and a pickled pyfunc from an older ``tuner promote`` is refused.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from trainables import csvsafe
from trainables.gpu_decode import DecodeDeviceError, resolve_decode_device, usable_gpu_decoder
from trainables.tta import get_tta
from tuner.errors import UserError
from tuner.lastmile.ensemble import Ensemble
from tuner.lastmile.images import decoded_batches, list_test_images
from tuner.lastmile.loading import load_model


@dataclass
class PredictionReport:
    written: int
    out: Path
    skipped: list[str] = field(default_factory=list)  # ids of files that are no readable image


def check_tta(tta: str) -> str:
    try:
        return get_tta(tta).name
    except ValueError as err:
        raise UserError(f"--tta: {err}") from None


def predict_folder(
    model: Ensemble,
    images_dir: Path,
    out: Path,
    *,
    batch_size: int = 64,
    tta: str = "none",
    progress: bool = True,
    decode_device: Optional[torch.device] = None,
) -> PredictionReport:
    check_tta(tta)
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a CSV file name")
    items = list_test_images(images_dir)
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    with tqdm(total=len(items), unit="img", desc="predict", disable=not progress) as bar:
        paths = [path for _, path in items]
        for positions, images, missed in decoded_batches(paths, batch_size, decode_device):
            skipped.extend(items[p][0] for p in missed)
            if images:
                predicted = model.probabilities(images, tta).argmax(dim=1).tolist()
                rows.extend((items[p][0], model.class_names[c]) for p, c in zip(positions, predicted))
            bar.update(len(positions) + len(missed))
    if not rows:
        raise UserError(f"--images: {images_dir}: none of its {len(items)} files is a readable image")
    write_csv_atomically(out, rows)
    return PredictionReport(len(rows), out, skipped)


def write_csv_atomically(out: Path, rows: list[tuple[str, str]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", newline="", dir=out.parent, prefix=f".{out.name}.",
                                         suffix=".part", delete=False)
    try:
        with handle:
            # Ids and classes come from file and folder names. The competition's are integers (digits:
            # never escaped, so the submission stays machine-readable); a name a spreadsheet would
            # run as a formula gets a leading ' (and `tuner score` reads it back without it).
            writer = csvsafe.writer(handle)
            writer.writerow(["id", "predicted"])
            writer.writerows(rows)
        os.replace(handle.name, out)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def predict(
    model_uri: str, images_dir: Path, out: Path, *, tracking_uri: Optional[str] = None,
    tta: Optional[str] = None, batch_size: int = 64, progress: bool = True,
    device: Optional[str] = None, decode_device: str = "auto",
) -> PredictionReport:
    """``tta`` None: the views the model was promoted with (an ensemble's card records them)."""
    list_test_images(images_dir)  # a bad folder fails before the model is fetched
    if tta is not None:
        check_tta(tta)
    model_device = pick_device(device)
    decode_on = pick_decode_device(decode_device, model_device)
    model, card = load_model(model_uri, tracking_uri, device=model_device)
    return predict_folder(model, images_dir, out, tta=tta or card.get("tta", "none"),
                          batch_size=batch_size, progress=progress, decode_device=decode_on)


def pick_device(device: Optional[str]) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device: {device!r}: no CUDA device on this machine")
    return device


def pick_decode_device(flag: str, model_device: str) -> Optional[torch.device]:
    """``--decode-device``: ``auto`` decodes JPEGs on the model's GPU when it runs on one whose
    decoder works (a logged line when it does not), else with Pillow; ``cpu``: Pillow; ``cuda`` /
    ``cuda:N``: there, or one clear error when that GPU is missing or cannot decode."""
    try:
        if flag == "auto":
            return usable_gpu_decoder(model_device) if model_device.startswith("cuda") else None
        return resolve_decode_device(flag)
    except DecodeDeviceError as err:
        raise UserError(str(err)) from None
