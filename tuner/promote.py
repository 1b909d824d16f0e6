"""``tuner promote NAME``: the best (or a chosen) trial's checkpoint -> a registered MLflow model.

The model is an MLflow pyfunc whose artifact is the trial's checkpoint, which carries its class map,
normalisation and TrialConfig; the version carries lineage tags (search, trial, run id, metric) and
the alias (``champion`` by default) moves to it, so ``models:/NAME@champion`` always means "the
model we would submit".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from tuner.errors import UserError
from tuner.leaderboard import load_board
from tuner.tracking import CHECKPOINT_TAG


class CheckpointClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict(DataFrame with a 'path' column)`` -> predicted class names."""

    def load_context(self, context) -> None:
        from trainables.inference import load_classifier

        self.classifier = load_classifier(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import torch

        from trainables.data import load_rgb_image

        paths = list(model_input["path"])
        batch = torch.stack([self.classifier.transform(load_rgb_image(p)) for p in paths])
        predicted = self.classifier.probabilities(batch).argmax(dim=1).tolist()
        return pd.DataFrame({"path": paths, "predicted": [self.classifier.class_names[i] for i in predicted]})


@dataclass
class Promotion:
    model_name: str
    version: str
    alias: str
    trial: str
    run_id: str
    metric: str
    value: Optional[float]

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def promote(
    client: MlflowClient, search: str, *, trial: Optional[str] = None, alias: str = "champion",
    model_name: Optional[str] = None,
) -> Promotion:
    board = load_board(client, search)
    candidates = [e for e in board.entries if e.best is not None]
    if trial is not None:
        chosen = next((e for e in board.entries if e.trial == trial), None)
        if chosen is None:
            known = ", ".join(e.trial for e in board.entries[:10])
            raise UserError(f"--trial: {trial!r} is not a trial of search {search!r} (e.g. {known})")
    elif candidates:
        chosen = candidates[0]
    else:
        raise UserError(f"search {search!r} has no trial with a {board.metric} yet")
    run = client.get_run(chosen.run_id)
    checkpoint_dir = run.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint_dir or not (Path(checkpoint_dir) / "checkpoint.pt").is_file():
        raise UserError(f"trial {chosen.trial} has no checkpoint on disk ({checkpoint_dir or 'none recorded'})")
    name = model_name or search
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    info = _log_model(chosen.run_id, Path(checkpoint_dir) / "checkpoint.pt", name)
    version = str(info.registered_model_version)
    lineage = {
        "tuner.search": search, "tuner.trial_id": chosen.trial, "tuner.run_id": chosen.run_id,
        "tuner.metric": board.metric, "tuner.metric_value": str(chosen.best),
    }
    for key, value in lineage.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return Promotion(name, version, alias, chosen.trial, chosen.run_id, board.metric, chosen.best)


def _log_model(run_id: str, checkpoint: Path, name: str):
    with mlflow.start_run(run_id=run_id, nested=True):
        with tempfile.TemporaryDirectory() as tmp:
            from trainables.checkpoint import load_checkpoint

            content = load_checkpoint(checkpoint)
            meta = Path(tmp) / "model_card.json"
            meta.write_text(json.dumps({
                "class_to_idx": content["class_to_idx"],
                "normalisation": content["normalisation"],
                "config": content["config"],
            }, indent=1))
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=CheckpointClassifierModel(),
                artifacts={"checkpoint": str(checkpoint), "model_card": str(meta)},
                registered_model_name=name,
                pip_requirements=["torch", "torchvision", "pillow", "pandas"],
            )
