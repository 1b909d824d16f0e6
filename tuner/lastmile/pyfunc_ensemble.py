"""A promoted ensemble's code: MLflow "models from code", so the model holds no pickle.

``tuner promote --ensemble`` logs this file's path as the pyfunc's ``python_model`` and one folder
artifact, ``ensemble``: the members' checkpoints and ``ensemble.json`` (members, weights, combine
rule, test-time views, calibration). ``load_context`` rebuilds the ensemble from the card with
``tuner.lastmile.loading`` (``torch.load(weights_only=True)`` for every member). ``predict(DataFrame
with a 'path' column)`` returns the paths and the predicted class names, with the views and the
calibration the ensemble was promoted with: the same predictions as ``tuner predict``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from trainables.data import load_rgb_image
from tuner.lastmile.loading import ENSEMBLE_CARD, load_ensemble_card


class EnsembleModel(PythonModel):
    """pyfunc: ``predict(DataFrame with a 'path' column)`` -> ``path``, ``predicted`` (class name)."""

    def load_context(self, context) -> None:
        self.ensemble, self.card = load_ensemble_card(Path(context.artifacts["ensemble"]) / ENSEMBLE_CARD)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        paths = list(model_input["path"])
        images = [load_rgb_image(p) for p in paths]
        predicted = self.ensemble.probabilities(images, self.card.get("tta", "none")).argmax(dim=1).tolist()
        return pd.DataFrame({"path": paths, "predicted": [self.ensemble.class_names[i] for i in predicted]})


mlflow.models.set_model(EnsembleModel())
