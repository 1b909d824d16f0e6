"""``tuner promote NAME --ensemble K``: the search's trials -> ONE registered ensemble model version.

1. Candidates: the leaderboard's best ``--candidates`` trials that have a checkpoint (at least K).
2. Their softmaxes on the validation set (``--val``, default: the folder the trials validated on),
   each image decoded once, each member with its own preprocessing and the chosen test-time views.
3. The validation images are split in two halves per class (``selection.split_halves``): greedy
   forward selection (Caruana) picks K members on the first half; every number reported comes from
   the second half, which no choice looked at.
4. The model: the members' checkpoints + ``ensemble.json`` (members with trial, run, checkpoint,
   weight; combine rule; TTA; calibration; the selection and both halves' accuracies) logged into
   the search's parent run as an MLflow "model from code" (``pyfunc_ensemble.py``): no pickle. The
   version gets lineage tags and the alias moves to it.

Every input is checked, and every checkpoint loaded, before anything is registered: a bad K, a
member whose checkpoint is gone or whose classes differ is one line (exit 2) and nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from mlflow.tracking import MlflowClient
from tqdm import tqdm

from tuner.errors import UserError
from tuner.lastmile.calibrate import Calibration
from tuner.lastmile.ensemble import (
    COMBINE_RULES, Ensemble, Member, calibration_for, check_same_classes, combine_probabilities,
)
from tuner.lastmile.images import class_indices, decoded_batches, labelled_images
from tuner.lastmile.loading import ENSEMBLE_CARD, load_member_classifier
from tuner.lastmile.predict import check_tta
from tuner.lastmile.promote import alias_version, check_names, fetch_checkpoint, log_code_model
from tuner.lastmile.selection import SELECT_BY, accuracy, greedy_select, split_halves
from tuner.tracking.leaderboard import Entry, find_search, load_board
from tuner.tracking.store import tracking_errors
from tuner.tracking.tags import CHECKPOINT_TAG

MODEL_CODE = Path(__file__).with_name("pyfunc_ensemble.py")


@dataclass(frozen=True)
class EnsembleOptions:
    k: int
    val_dir: Optional[str] = None
    tta: str = "none"
    combine: str = "geometric"
    replacement: bool = False
    diverse: bool = False
    select_by: str = "accuracy"  # or log-loss
    calibrate: Optional[str] = None  # balanced | file:priors.csv
    candidates: int = 10
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True


@dataclass
class EnsemblePromotion:
    model_name: str
    version: str
    alias: str
    card: dict
    previous_version: Optional[str] = None

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def check_options(options: EnsembleOptions) -> None:
    if options.k < 1:
        raise UserError(f"--ensemble: must be >= 1, got {options.k}")
    if options.candidates < options.k:
        raise UserError(f"--candidates: must be >= --ensemble ({options.k}), got {options.candidates}")
    if options.combine not in COMBINE_RULES:
        raise UserError(f"--combine: must be one of {', '.join(COMBINE_RULES)}, got {options.combine!r}")
    check_tta(options.tta)
    if options.select_by not in SELECT_BY:
        raise UserError(f"--select-by: must be one of {', '.join(SELECT_BY)}, got {options.select_by!r}")


def choose_candidates(board, k: int, limit: int) -> list[Entry]:
    finished = [e for e in board.entries if e.best is not None]
    if len(finished) < k:
        raise UserError(f"--ensemble {k}: search {board.search!r} has only {len(finished)} trial(s) "
                        f"with a {board.metric} to choose from")
    return finished[:limit]


def promote_ensemble(client: MlflowClient, search: str, options: EnsembleOptions, *,
                     alias: str = "champion", model_name: Optional[str] = None) -> EnsemblePromotion:
    name = model_name or search
    check_names(name, alias)
    check_options(options)
    board = load_board(client, search)
    entries = choose_candidates(board, options.k, options.candidates)
    with tracking_errors(client.tracking_uri), tempfile.TemporaryDirectory(prefix="tuner-ensemble-") as tmp:
        members, locations = _load_candidates(client, entries, Path(tmp) / "candidates", options.device)
        check_same_classes(members)
        val_dir = Path(options.val_dir or members[0].classifier.config.val_dir)
        items = labelled_images(val_dir)
        labels = torch.tensor(class_indices([label for _, label in items], members[0].classifier.class_names,
                                            f"--val {val_dir}"))
        probs, kept = _candidate_probabilities(members, [p for p, _ in items], options)
        labels = labels[kept]
        select, report = split_halves([str(items[i][0]) for i in kept.tolist()], labels.tolist())
        archs = [m.arch or "" for m in members] if options.diverse else None
        chosen = greedy_select(probs[:, select], labels[select], options.k, combine=options.combine,
                               replacement=options.replacement, archs=archs, select_by=options.select_by)
        calibration = _calibration(options.calibrate, members, chosen.weights)
        card = _card(board, entries, members, chosen, probs, labels, select, report, options, calibration,
                     val_dir)
        model_dir = _model_folder(Path(tmp) / "ensemble", card, chosen.weights, locations)
        _, parent = find_search(client, search)
        previous = alias_version(client, name, alias)
        info = log_code_model(client, parent.info.run_id, name="ensemble", model_name=name, code=MODEL_CODE,
                              artifacts={"ensemble": model_dir},
                              metadata={"kind": "ensemble", "members": len(card["members"])})
        version = str(info.registered_model_version)
        tags = {"tuner.search": search, "tuner.kind": "ensemble", "tuner.run_id": parent.info.run_id,
                "tuner.metric": "val_acc_heldout_half",
                "tuner.metric_value": str(card["validation"]["report_half"]["ensemble"]),
                "tuner.members": ",".join(m["trial"] for m in card["members"])}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, alias, version)
    return EnsemblePromotion(name, version, alias, card, previous)


def _load_candidates(client: MlflowClient, entries: list[Entry], folder: Path, device: str):
    members, locations = [], []
    for position, entry in enumerate(entries):
        location = client.get_run(entry.run_id).data.tags.get(CHECKPOINT_TAG)
        checkpoint = fetch_checkpoint(location, entry.trial, folder / str(position))
        classifier = load_member_classifier(checkpoint, device)
        members.append(Member(classifier, 1.0, entry.trial, entry.run_id, location, classifier.config.arch))
        locations.append(checkpoint)
    return members, locations


def _candidate_probabilities(members: list[Member], paths: list[Path], options: EnsembleOptions):
    """([candidates, N, classes] softmaxes over the readable images, indices of those images)."""
    candidates = Ensemble(members)
    chunks, kept = [], []
    with tqdm(total=len(paths), unit="img", desc="validate candidates", disable=not options.progress) as bar:
        for positions, images, missed in decoded_batches(paths, options.batch_size):
            if images:
                chunks.append(candidates.member_probabilities(images, options.tta))
                kept.extend(positions)
            bar.update(len(positions) + len(missed))
    if not kept:
        raise UserError(f"--val: none of its {len(paths)} files is a readable image")
    return torch.cat(chunks, dim=1), torch.tensor(kept)


def _calibration(spec: Optional[str], members: list[Member], weights: dict[int, float]) -> Optional[Calibration]:
    if spec is None:
        return None
    return calibration_for([members[i] for i in weights], spec)


def _card(board, entries, members, chosen, probs, labels, select, report, options, calibration, val_dir) -> dict:
    picked = list(chosen.weights.items())
    weights = torch.tensor([w for _, w in picked])

    def scores(indices) -> dict:
        sub = probs[[i for i, _ in picked]][:, indices]
        combined = combine_probabilities(sub, weights, options.combine)
        out = {"ensemble": accuracy(combined, labels[indices]),
               "best_member": accuracy(probs[0][indices], labels[indices]),  # the leaderboard's best
               "members": {members[i].trial: accuracy(probs[i][indices], labels[indices]) for i, _ in picked}}
        if calibration is not None:
            out["ensemble_calibrated"] = accuracy(calibration.apply(combined), labels[indices])
        out["images"] = len(indices)
        return out

    return {
        "kind": "ensemble", "format": 1, "search": board.search,
        "combine": options.combine, "tta": options.tta,
        "calibration": calibration.to_dict() if calibration is not None else None,
        "class_names": members[0].classifier.class_names,
        "members": [
            {"file": f"member-{n}.pt", "weight": weight, "trial": members[i].trial,
             "run_id": members[i].run_id, "checkpoint": members[i].checkpoint, "arch": members[i].arch,
             board.metric: entries[i].best, "image_size": members[i].classifier.config.image_size}
            for n, (i, weight) in enumerate(picked)
        ],
        "selection": {
            "rule": f"greedy forward selection (Caruana) on the {options.select_by} of the combined softmax",
            "k": options.k, "replacement": options.replacement, "diverse": options.diverse,
            "candidates": [e.trial for e in entries],
            "steps": [dict(step, pick=members[step["pick"]].trial) for step in chosen.steps],
            "val_dir": str(val_dir),
            "split": "per class, files ordered by sha256 of the file name, dealt alternately",
        },
        "validation": {"selection_half": scores(select), "report_half": scores(report)},
    }


def _model_folder(folder: Path, card: dict, weights: dict[int, float], checkpoints: list[Path]) -> Path:
    folder.mkdir(parents=True)
    for n, index in enumerate(weights):
        shutil.copyfile(checkpoints[index], folder / f"member-{n}.pt")
    (folder / ENSEMBLE_CARD).write_text(json.dumps(card, indent=1, default=str))
    return folder
