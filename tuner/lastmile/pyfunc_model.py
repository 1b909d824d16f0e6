"""The promoted model's code: MLflow "models from code", so a promoted model holds no pickle.

``tuner promote`` logs this file's path as the pyfunc's ``python_model``. MLflow copies the source
into the model (beside ``MLmodel``) and, on ``mlflow.pyfunc.load_model``, runs it: it defines the class
below and hands one to ``mlflow.models.set_model``. ``load_context`` rebuilds the classifier from the
model's ``checkpoint`` artifact with ``trainables.inference.load_classifier`` (``torch.load`` with
``weights_only=True``: a checkpoint that needs pickled code is refused). Loading needs this package
installed, as predicting does anyway. ``predict(DataFrame with a 'path' column)`` returns the paths
and the predicted class names, the names the training folders had.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from trainables.data import load_rgb_image
from trainables.inference import load_classifier


class CheckpointClassifierModel(PythonModel):
    """pyfunc: ``predict(DataFrame with a 'path' column)`` -> ``path``, ``predicted`` (class name)."""

    def load_context(self, context) -> None:
        self.classifier = load_classifier(context.artifacts["checkpoint"])

    # The DataFrame hint: MLflow infers no schema from it and validates nothing (as without a
    # hint), and it stops MLflow's warning that the hint is missing.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        paths = list(model_input["path"])
        batch = torch.stack([self.classifier.transform(load_rgb_image(p)) for p in paths])
        predicted = self.classifier.probabilities(batch).argmax(dim=1).tolist()
        names = [self.classifier.class_names[i] for i in predicted]
        return pd.DataFrame({"path": paths, "predicted": names})


mlflow.models.set_model(CheckpointClassifierModel())
