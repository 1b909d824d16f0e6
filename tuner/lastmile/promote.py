"""``tuner promote NAME``: the best (or a chosen) trial's checkpoint -> a registered MLflow model.

The model is an MLflow pyfunc logged into the trial's own run (its status untouched) whose artifacts
are the trial's best checkpoint (model weights, TrialConfig, class map, normalisation) and a
``model_card.json`` with the class names and preprocessing; the MLmodel metadata repeats them. Nothing
in it is a pickle: the pyfunc is MLflow's "models from code", the source file ``pyfunc_model.py`` of
this package, and the checkpoint loads with ``torch.load(weights_only=True)``. The
version carries lineage tags (search, trial, run id, metric and value, checkpoint URI) and the alias
(``champion`` by default) moves to it, so ``models:/NAME@champion`` always means "the model we would
submit". Every argument is checked before anything is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlflow
import pyarrow.fs
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    _validate_model_alias_name, _validate_model_alias_name_reserved, _validate_model_name,
)

from tuner.errors import UserError
from tuner.tracking.store import tracking_errors
from tuner.tracking.leaderboard import Board, Entry, load_board
from tuner.tracking.lineage import open_location
from tuner.tracking.tags import CHECKPOINT_TAG
from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint

# The pyfunc's code, logged as source ("models from code"), never as a cloudpickled object: loading
# the model runs this file (visible in the model's artifacts), not a pickle.
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


@dataclass
class Promotion:
    model_name: str
    version: str
    alias: str
    trial: str
    run_id: str
    metric: str
    value: Optional[float]
    previous_version: Optional[str] = None  # where the alias pointed before

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def check_names(model_name: str, alias: str) -> None:
    try:
        _validate_model_name(model_name)
    except MlflowException as err:
        raise UserError(f"--model-name: {err.message}") from None
    try:
        _validate_model_alias_name(alias)
        _validate_model_alias_name_reserved(alias)
    except MlflowException as err:
        raise UserError(f"--alias: {err.message}") from None


def choose_trial(board: Board, trial: Optional[str]) -> Entry:
    if trial is not None:
        chosen = next((e for e in board.entries if e.trial == trial), None)
        if chosen is None:
            known = ", ".join(e.trial for e in board.entries[:10]) or "none"
            raise UserError(f"--trial: {trial!r} is not a trial of search {board.search!r} "
                            f"(its trials, best first: {known})")
        return chosen
    candidates = [e for e in board.entries if e.best is not None]
    if not candidates:
        raise UserError(f"search {board.search!r} has no trial with a {board.metric} yet")
    return candidates[0]


def fetch_checkpoint(location: Optional[str], trial: str, target: Path) -> Path:
    """The trial's checkpoint file copied to ``target`` (local path or remote storage URI)."""
    if not location:
        raise UserError(f"trial {trial} has no checkpoint recorded (tag {CHECKPOINT_TAG})")
    try:
        fs, base = open_location(location)
        source = f"{base}/{CHECKPOINT_FILE}"
        if fs.get_file_info(source).type != pyarrow.fs.FileType.File:
            raise UserError(f"trial {trial}: checkpoint {location} is gone (no {CHECKPOINT_FILE})")
        target.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(source) as stream, open(target / CHECKPOINT_FILE, "wb") as sink:
            shutil.copyfileobj(stream, sink)
    except (OSError, ValueError) as err:  # pyarrow: unreachable storage, bad URI
        raise UserError(f"trial {trial}: cannot read checkpoint {location}: {err}") from None
    return target / CHECKPOINT_FILE


def promote(
    client: MlflowClient, search: str, *, trial: Optional[str] = None, alias: str = "champion",
    model_name: Optional[str] = None,
) -> Promotion:
    name = model_name or search
    check_names(name, alias)
    board = load_board(client, search)
    chosen = choose_trial(board, trial)
    with tracking_errors(client.tracking_uri), tempfile.TemporaryDirectory(prefix="tuner-promote-") as tmp:
        location = client.get_run(chosen.run_id).data.tags.get(CHECKPOINT_TAG)
        checkpoint = fetch_checkpoint(location, chosen.trial, Path(tmp) / "checkpoint")
        card_file = Path(tmp) / "model_card.json"
        card = write_model_card(checkpoint, card_file)
        previous = alias_version(client, name, alias)
        info = log_code_model(
            client, chosen.run_id, name="model", model_name=name, code=MODEL_CODE,
            artifacts={"checkpoint": checkpoint, "model_card": card_file},
            metadata={"class_names": card["class_names"], "preprocessing": card["preprocessing"]})
        version = str(info.registered_model_version)
        lineage = {
            "tuner.search": search, "tuner.trial_id": chosen.trial, "tuner.run_id": chosen.run_id,
            "tuner.metric": board.metric, "tuner.metric_value": str(chosen.best),
            "tuner.checkpoint": location,
        }
        for key, value in lineage.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, alias, version)
    return Promotion(name, version, alias, chosen.trial, chosen.run_id, board.metric, chosen.best,
                     previous)


def write_model_card(checkpoint: Path, out: Path) -> dict:
    """Class map and preprocessing of a checkpoint, as JSON beside the model (and returned)."""
    try:
        content = load_checkpoint(checkpoint)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    config = content["config"]
    class_to_idx = content["class_to_idx"]
    card = {
        "class_names": [n for n, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])],
        "class_to_idx": class_to_idx,
        "preprocessing": {
            "image_size": config.get("image_size"),
            "eval_crop": (config.get("aug") or {}).get("eval_crop", 1.0),
            "mean": content["normalisation"]["mean"],
            "std": content["normalisation"]["std"],
        },
        "config": config,
        "epoch": content.get("epoch"),
        # Training images per class index (prior-shift calibration); None from older checkpoints.
        "class_counts": content.get("class_counts"),
    }
    out.write_text(json.dumps(card, indent=1, default=str))
    return card


def alias_version(client: MlflowClient, name: str, alias: str) -> Optional[str]:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:  # no such model or alias yet
        return None


def log_code_model(client: MlflowClient, run_id: str, *, name: str, model_name: str, code: Path,
                   artifacts: dict, metadata: dict):
    """Logs a pyfunc "model from code" (``code``: its source file, nothing pickled) into ``run_id``
    without re-opening the run (a FINISHED run stays FINISHED) and registers it as ``model_name``."""
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow logs that it cannot infer a signature from predict's DataFrame type hint: the model has
    # none, on purpose (as before: its input is not validated, a 'path' column is all it reads).
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            python_model=str(code), artifacts={k: str(v) for k, v in artifacts.items()},
            registered_model_name=model_name, metadata=metadata,
            pip_requirements=["torch", "torchvision", "pillow", "pandas"],
        )
    finally:
        quiet.setLevel(level)
