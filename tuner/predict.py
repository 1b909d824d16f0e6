"""``tuner predict``: a promoted model (or checkpoint) -> a Kaggle submission CSV ``id,predicted``.

Ids come from the file names (``123.jpg`` -> 123). Unreadable files are skipped, counted and named;
the CSV is written to a temporary name and renamed, so a failed run never leaves half a submission.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from tuner.errors import UserError
from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError
from trainables.data import load_rgb_image
from trainables.inference import Classifier, load_classifier

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flips", "crops")


@dataclass
class PredictionReport:
    written: int
    out: Path
    skipped: list[str] = field(default_factory=list)  # ids of unreadable images


def resolve_checkpoint(model_uri: str, tracking_uri: Optional[str]) -> Path:
    """A local checkpoint file for ``models:/name@alias``, ``runs:/…`` or a local path."""
    local = Path(model_uri)
    if local.exists():
        return local / CHECKPOINT_FILE if local.is_dir() and (local / CHECKPOINT_FILE).is_file() else local
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as err:  # MlflowException, OSError: the URI does not resolve
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"model {model_uri!r} does not resolve: {first}") from None
    found = sorted(directory.rglob(CHECKPOINT_FILE))
    if not found:
        raise UserError(f"model {model_uri!r} holds no {CHECKPOINT_FILE}")
    return found[0]


def list_test_images(images_dir: Path) -> list[tuple[str, Path]]:
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: test image folder does not exist")
    files = [p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UserError(f"{images_dir}: test image folder is empty")
    # Numeric ids sort numerically (Kaggle's order), other names alphabetically after them.
    return sorted(((p.stem, p) for p in files), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0]))


def predict_folder(
    classifier: Classifier,
    images_dir: Path,
    out: Path,
    *,
    batch_size: int = 128,
    tta: str = "none",
    progress: bool = True,
) -> PredictionReport:
    if tta not in TTA_MODES:
        raise UserError(f"--tta: must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    items = list_test_images(images_dir)
    device = next(classifier.model.parameters()).device
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    bar = tqdm(total=len(items), unit="img", desc="predict", disable=not progress)
    for start in range(0, len(items), batch_size):
        batch_ids, tensors = [], []
        for image_id, path in items[start : start + batch_size]:
            try:
                tensors.append(classifier.transform(load_rgb_image(path)))
                batch_ids.append(image_id)
            except Exception as err:  # an unreadable test file: counted, named, not fatal
                log.warning("skipping test image %s (%s)", path.name, err)
                skipped.append(image_id)
        if tensors:
            probs = classifier.probabilities(torch.stack(tensors).to(device), tta=tta)
            predicted = probs.argmax(dim=1).tolist()
            rows.extend((i, classifier.class_names[p]) for i, p in zip(batch_ids, predicted))
        bar.update(len(items[start : start + batch_size]))
    bar.close()
    _write_csv_atomically(out, rows)
    return PredictionReport(len(rows), out, skipped)


def _write_csv_atomically(out: Path, rows: list[tuple[str, str]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    with open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "predicted"])
        writer.writerows(rows)
    os.replace(partial, out)


def predict(
    model_uri: str, images_dir: Path, out: Path, *, tracking_uri: Optional[str] = None,
    tta: str = "none", batch_size: int = 128, progress: bool = True,
) -> PredictionReport:
    checkpoint = resolve_checkpoint(model_uri, tracking_uri)
    try:
        classifier = load_classifier(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    except CheckpointError as err:
        raise UserError(str(err)) from None
    return predict_folder(classifier, images_dir, out, tta=tta, batch_size=batch_size, progress=progress)
