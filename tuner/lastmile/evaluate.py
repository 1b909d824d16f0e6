"""``tuner evaluate MODEL --images VAL``: what each last-mile step buys, measured on labelled images.

For a single model or an ensemble, with every requested test-time view set (``--tta none,twelve``)
and calibration (``--calibrate none,balanced``), and for each member alone (``--members``): top-1
and top-5 accuracy, per-class accuracy and the confusion matrix. The images are decoded once; each
member's softmax is computed once per view set; the combinations are then cheap. The result is a
table on the terminal and, for a registered model, metrics and a JSON artifact on the model
version's run (``evaluate/<images>/<tta>/<calibration>/accuracy``), so the numbers stay next to the
model they describe.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import mlflow
import torch
from mlflow.store.artifact.utils.models import get_model_name_and_version
from tqdm import tqdm

from tuner.errors import UserError
from tuner.lastmile.ensemble import Ensemble, calibration_for, combine_probabilities
from tuner.lastmile.images import class_indices, decoded_batches, labelled_images
from tuner.lastmile.loading import load_model
from tuner.lastmile.predict import check_tta, pick_decode_device, pick_device


@dataclass
class Scores:
    model: str  # "ensemble" or "member <trial>"
    tta: str
    calibration: str
    accuracy: float
    top5: float
    per_class: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # [true][predicted]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Evaluation:
    images: int
    skipped: int
    rows: list[Scores]
    logged_to: Optional[str] = None  # run id


def score(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], **what) -> Scores:
    classes = len(class_names)
    predicted = probs.argmax(dim=1)
    top5 = probs.topk(min(5, classes), dim=1).indices.eq(labels.view(-1, 1)).any(dim=1)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(dim=1)
    per_class = {name: float(confusion[i, i] / totals[i]) for i, name in enumerate(class_names) if totals[i]}
    return Scores(accuracy=float((predicted == labels).double().mean()), top5=float(top5.double().mean()),
                  per_class=per_class, confusion=confusion.tolist(), **what)


def evaluate(
    model_uri: str, images_dir: Path, *, key: Optional[Path] = None, ttas: Sequence[str] = ("none",),
    calibrations: Optional[Sequence[str]] = None, members: bool = False, tracking_uri: Optional[str] = None,
    batch_size: int = 64, device: Optional[str] = None, progress: bool = True, log: bool = True,
    decode_device: str = "auto",
) -> Evaluation:
    for tta in ttas:
        check_tta(tta)
    items = labelled_images(images_dir, key)  # a bad folder fails before the model is fetched
    model_device = pick_device(device)
    decode_on = pick_decode_device(decode_device, model_device)
    model, card = load_model(model_uri, tracking_uri, device=model_device)
    labels_all = class_indices([label for _, label in items], model.class_names, f"--images {images_dir}")
    paths = [p for p, _ in items]
    probs, kept = _member_probabilities(model, paths, ttas, batch_size, progress, decode_on)
    labels = torch.tensor(labels_all)[kept]
    if calibrations is None:  # as promoted: raw, and the model's own calibration when it has one
        calibrations = ["none"] + (["model"] if model.calibration is not None else [])
    cal = {name: _calibration(model, name) for name in calibrations}
    rows: list[Scores] = []
    for tta in ttas:
        if members or len(model.members) > 1:
            for index, member in enumerate(model.members):
                rows.append(score(probs[tta][index], labels, model.class_names, tta=tta, calibration="none",
                                  model=f"member {member.trial or member.checkpoint}"))
        combined = combine_probabilities(probs[tta], model.weights, model.combine)
        for name, calibration in cal.items():
            adjusted = combined if calibration is None else calibration.apply(combined)
            rows.append(score(adjusted, labels, model.class_names, tta=tta, calibration=name,
                              model="ensemble" if len(model.members) > 1 else "model"))
    evaluation = Evaluation(len(kept), len(items) - len(kept), rows)
    if log and model_uri.startswith("models:/"):
        evaluation.logged_to = _log(model_uri, images_dir, evaluation)
    return evaluation


def _member_probabilities(model: Ensemble, paths, ttas, batch_size: int, progress: bool,
                          decode_device: Optional[torch.device] = None):
    chunks: dict[str, list[torch.Tensor]] = {tta: [] for tta in ttas}
    kept: list[int] = []
    with tqdm(total=len(paths), unit="img", desc="evaluate", disable=not progress) as bar:
        for positions, images, missed in decoded_batches(paths, batch_size, decode_device):
            if images:
                for tta in ttas:  # one decode, every view set
                    chunks[tta].append(model.member_probabilities(images, tta))
                kept.extend(positions)
            bar.update(len(positions) + len(missed))
    if not kept:
        raise UserError(f"--images: none of its {len(paths)} files is a readable image")
    return {tta: torch.cat(parts, dim=1) for tta, parts in chunks.items()}, torch.tensor(kept)


def _calibration(model: Ensemble, name: str):
    """None for "none"; "model" for the calibration the ensemble was promoted with; otherwise
    ``--calibrate``'s forms (balanced | file:priors.csv) from the members' training counts."""
    if name == "none":
        return None
    if name == "model":
        if model.calibration is None:
            raise UserError("--calibrate model: this model was promoted without a calibration")
        return model.calibration
    return calibration_for(model.members, name)


def _log(model_uri: str, images_dir: Path, evaluation: Evaluation) -> Optional[str]:
    """Metrics and the full JSON on the run the model version was logged from."""
    client = mlflow.MlflowClient()
    name, version = get_model_name_and_version(client, model_uri)
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None
    where = _metric_part(images_dir.name or "images")
    for row in evaluation.rows:
        prefix = f"evaluate/{where}/{_metric_part(row.model)}/{row.tta}/{_metric_part(row.calibration)}"
        client.log_metric(run_id, f"{prefix}/accuracy", row.accuracy)
        client.log_metric(run_id, f"{prefix}/top5", row.top5)
    client.log_text(run_id, json.dumps({"images_dir": str(images_dir), "images": evaluation.images,
                                        "skipped": evaluation.skipped,
                                        "rows": [r.as_dict() for r in evaluation.rows]}, indent=1),
                    f"evaluate/{where}-v{version}.json")
    return run_id


def _metric_part(text: str) -> str:
    # MLflow metric keys allow letters, digits, _ - . / and spaces: anything else becomes "_".
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", text)[:60] or "_"


def render(evaluation: Evaluation) -> str:
    lines = [f"{evaluation.images} images" + (f" ({evaluation.skipped} unreadable, skipped)"
                                              if evaluation.skipped else ""),
             f"{'model':<28} {'tta':<12} {'calibration':<18} {'top-1':>7} {'top-5':>7}"]
    for row in evaluation.rows:
        lines.append(f"{row.model[:28]:<28} {row.tta:<12} {row.calibration[:18]:<18} "
                     f"{row.accuracy:>7.4f} {row.top5:>7.4f}")
    if evaluation.logged_to:
        lines.append(f"logged to MLflow run {evaluation.logged_to} (metrics evaluate/…)")
    return "\n".join(lines) + "\n"
