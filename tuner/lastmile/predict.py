"""``tuner predict``: a promoted model (or checkpoint) -> a Kaggle submission CSV ``id,predicted``.

Ids come from the file names (``123.jpg`` -> 123); rows follow numeric id order. ``predicted`` is the
class name the training folders used (for the competition: its label id). Test-time augmentation
averages the softmax over views (``flips``: + mirror; ``crops``: + mirror + four shifted crops).
A file that is not a readable image is skipped, counted and named by id; the CSV is written to a
temporary name and renamed, so a failed run never leaves half a submission.

Only the model's ``checkpoint.pt`` is read (``torch.load(weights_only=True)``); its Python code is
never run. A pyfunc with a cloudpickled ``python_model`` (what ``tuner promote`` wrote before models
from code) is refused with the command that promotes the same trial again.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlflow
import torch
import yaml
from tqdm import tqdm

from tuner.errors import UserError
from tuner.tracking.store import open_client
from trainables import csvsafe
from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError
from trainables.data import load_rgb_image
from trainables.inference import Classifier, load_classifier

log = logging.getLogger(__name__)

TTA_MODES = ("none", "flips", "crops")
PICKLED_MODEL_FILE = "python_model.pkl"  # MLflow's cloudpickled PythonModel (+ .gz/.bz2/.lzma)


@dataclass
class PredictionReport:
    written: int
    out: Path
    skipped: list[str] = field(default_factory=list)  # ids of files that are no readable image


def resolve_checkpoint(model_uri: str, tracking_uri: Optional[str]) -> Path:
    """A local checkpoint file for ``models:/name@alias``, ``runs:/…``, ``models:/m-…`` or a path."""
    local = Path(model_uri)
    if local.exists():
        return local / CHECKPOINT_FILE if local.is_dir() and (local / CHECKPOINT_FILE).is_file() else local
    if ":/" not in model_uri:
        raise UserError(f"model {model_uri!r} does not resolve: no such file, and not a "
                        "models:/ or runs:/ URI")
    if tracking_uri:
        client = open_client(tracking_uri)  # checks the store exists; makes HTTP fail fast
        mlflow.set_tracking_uri(client.tracking_uri)
        mlflow.set_registry_uri(client.tracking_uri)
    try:
        directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as err:  # MlflowException, OSError: the URI does not resolve
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model {model_uri!r} does not resolve: {first}") from None
    pickled = pickled_pyfunc(directory)
    if pickled:
        raise UserError(
            f"model {model_uri!r} is a pickled pyfunc ({pickled}), promoted by an older tuner; "
            f"tuner predict does not use pickled models: promote it again with "
            f"`{_promote_again(model_uri)}` and predict with the new version")
    found = sorted(directory.rglob(CHECKPOINT_FILE))
    if not found:
        raise UserError(f"model {model_uri!r} holds no {CHECKPOINT_FILE}")
    return found[0]


def pickled_pyfunc(directory: Path) -> Optional[str]:
    """What makes a downloaded model a pickled pyfunc (its path in the model), or None: a
    ``python_model.pkl*`` file, or an MLmodel whose python_function flavor names one (``python_model``;
    a model from code has ``model_code_path`` instead). Nothing is unpickled to find out."""
    pickle_file = next(iter(sorted(directory.rglob(PICKLED_MODEL_FILE + "*"))), None)
    if pickle_file is not None:
        return str(pickle_file.relative_to(directory))
    for mlmodel in sorted(directory.rglob("MLmodel")):
        try:
            flavors = yaml.safe_load(mlmodel.read_text()).get("flavors") or {}
            pickled = (flavors.get("python_function") or {}).get("python_model")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
            continue  # not an MLmodel we can read: the checkpoint decides
        if pickled:
            return str((mlmodel.parent / str(pickled)).relative_to(directory))
    return None


def _promote_again(model_uri: str) -> str:
    """The `tuner promote` command for the trial a registered version came from (its lineage tags),
    or its generic form when the URI names no registered version or the tags are missing."""
    try:
        from mlflow.store.artifact.utils.models import get_model_name_and_version  # rare path only

        client = mlflow.MlflowClient()
        name, version = get_model_name_and_version(client, model_uri)
        tags = client.get_model_version(name, version).tags
        return shlex.join(["tuner", "promote", tags["tuner.search"], "--trial", tags["tuner.trial_id"],
                           "--model-name", name])
    except Exception:  # a runs:/ or models:/m-… URI, a model registered by hand: no lineage
        return "tuner promote SEARCH --trial TRIAL"


def _id_order(item: tuple[str, Path]) -> tuple:
    # Numeric ids sort numerically (Kaggle's order), other names alphabetically after them. Numeric
    # means ASCII digits: str.isdigit() also accepts "²" (which int() refuses: `².jpg` crashed the
    # sort) and "٣" (which int() reads as 3: an id Kaggle would not); those sort as names.
    image_id = item[0]
    numeric = image_id.isascii() and image_id.isdigit()
    return (not numeric, int(image_id) if numeric else 0, image_id)


def list_test_images(images_dir: Path) -> list[tuple[str, Path]]:
    if not images_dir.is_dir():
        raise UserError(f"--images: {images_dir}: test image folder does not exist")
    files = [p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UserError(f"--images: {images_dir}: test image folder is empty")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise UserError(f"--images: {images_dir}: id {path.stem!r} twice "
                            f"({seen[path.stem].name} and {path.name}); ids come from file names")
        seen[path.stem] = path
    return sorted(seen.items(), key=_id_order)


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
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a CSV file name")
    items = list_test_images(images_dir)
    device = next(classifier.model.parameters()).device
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    with tqdm(total=len(items), unit="img", desc="predict", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            ids, tensors = _load_batch(classifier, batch, skipped)
            if tensors:
                probs = classifier.probabilities(torch.stack(tensors).to(device), tta=tta)
                predicted = probs.argmax(dim=1).tolist()
                rows.extend((i, classifier.class_names[p]) for i, p in zip(ids, predicted))
            bar.update(len(batch))
    if not rows:
        raise UserError(f"--images: {images_dir}: none of its {len(items)} files is a readable image")
    write_csv_atomically(out, rows)
    return PredictionReport(len(rows), out, skipped)


def _load_batch(classifier: Classifier, batch, skipped: list[str]):
    ids, tensors = [], []
    for image_id, path in batch:
        try:
            tensors.append(classifier.transform(load_rgb_image(path)))
            ids.append(image_id)
        except Exception as err:  # not an image, truncated, a bomb: counted, named, not fatal
            log.info("skipping test file %s (%s: %s)", path.name, type(err).__name__, err)
            skipped.append(image_id)
    return ids, tensors


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
    tta: str = "none", batch_size: int = 128, progress: bool = True,
) -> PredictionReport:
    list_test_images(images_dir)  # a bad folder fails before the model is fetched
    checkpoint = resolve_checkpoint(model_uri, tracking_uri)
    try:
        classifier = load_classifier(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    except CheckpointError as err:
        raise UserError(str(err)) from None
    return predict_folder(classifier, images_dir, out, tta=tta, batch_size=batch_size, progress=progress)
