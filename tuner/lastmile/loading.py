"""A model URI -> an ``Ensemble``: a promoted single trial, a promoted ensemble, or a checkpoint file.

``models:/NAME@alias``, ``models:/NAME/3``, ``runs:/…`` and ``models:/m-…`` are downloaded with
MLflow; a local path may be a ``checkpoint.pt``, a folder holding one, or a folder holding an
ensemble card (``ensemble.json``, written by ``tuner promote --ensemble``). Only checkpoints are
read (``torch.load(weights_only=True)``) and JSON; nothing in a model is unpickled or run. A
pickled pyfunc from an older ``tuner promote`` is refused with the command that promotes again.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import mlflow
import yaml

from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError
from trainables.inference import load_classifier
from tuner.errors import UserError
from tuner.lastmile.calibrate import Calibration
from tuner.lastmile.ensemble import Ensemble, Member
from tuner.tracking.store import open_client

ENSEMBLE_CARD = "ensemble.json"
PICKLED_MODEL_FILE = "python_model.pkl"  # MLflow's cloudpickled PythonModel (+ .gz/.bz2/.lzma)


def resolve_model(model_uri: str, tracking_uri: Optional[str]) -> Path:
    """A local file or folder for the URI: a path as given, otherwise MLflow's download of it."""
    local = Path(model_uri)
    if local.exists():
        return local
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
    return directory


def resolve_checkpoint(model_uri: str, tracking_uri: Optional[str]) -> Path:
    """The checkpoint file of a single-model URI."""
    return _checkpoint_in(resolve_model(model_uri, tracking_uri), model_uri)


def _checkpoint_in(found: Path, model_uri: str) -> Path:
    if found.is_file():
        return found
    checkpoints = sorted(found.rglob(CHECKPOINT_FILE))
    if not checkpoints:
        raise UserError(f"model {model_uri!r} holds no {CHECKPOINT_FILE} and no {ENSEMBLE_CARD}")
    return checkpoints[0]


def load_model(model_uri: str, tracking_uri: Optional[str] = None, *, device: str = "cpu") -> tuple[Ensemble, dict]:
    """(ensemble, card): the card is the ensemble's JSON card, or a one-member card for a single
    checkpoint (``tta`` "none", no calibration)."""
    found = resolve_model(model_uri, tracking_uri)
    if found.is_dir():
        card_file = next(iter(sorted(found.rglob(ENSEMBLE_CARD))), None)
    else:
        card_file = found if found.name == ENSEMBLE_CARD else None
    if card_file is not None:
        return load_ensemble_card(card_file, device=device)
    checkpoint = _checkpoint_in(found, model_uri)
    member = Member(load_member_classifier(checkpoint, device), checkpoint=str(checkpoint))
    member.arch = member.classifier.config.arch
    card = {"kind": "single", "tta": "none", "combine": "geometric", "calibration": None,
            "members": [{"file": str(checkpoint), "weight": 1.0, "arch": member.arch}]}
    return Ensemble([member]), card


def load_ensemble_card(card_file: Path, *, device: str = "cpu") -> tuple[Ensemble, dict]:
    try:
        card = json.loads(card_file.read_text())
        entries = card["members"]
        members = []
        for entry in entries:
            path = card_file.parent / entry["file"]
            if path.resolve().parent != card_file.parent.resolve():
                raise UserError(f"{card_file}: member file {entry['file']!r} is outside the model")
            members.append(Member(load_member_classifier(path, device), float(entry["weight"]), entry.get("trial"),
                                  entry.get("run_id"), entry.get("checkpoint"), entry.get("arch")))
        calibration = Calibration.from_dict(card["calibration"]) if card.get("calibration") else None
        return Ensemble(members, card.get("combine", "geometric"), calibration), card
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{card_file}: not a usable ensemble card ({type(err).__name__}: {err})") from None


def load_member_classifier(checkpoint: Path, device: str = "cpu"):
    try:
        return load_classifier(checkpoint, device=device)
    except CheckpointError as err:
        raise UserError(str(err)) from None


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
