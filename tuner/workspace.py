"""Where a search's results live by default (the embedded mode) and how flags/env override it.

Embedded default, all under the working directory: MLflow in ``mlflow.db`` (SQLite) with artifacts in
``mlruns/``, Ray results and checkpoints in ``runs/``, the Optuna study and the MLflow run ids in
``runs/<search>/tuner_state/``. Team mode overrides each with a flag or variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from tuner.driver import SearchPlaces
from tuner.errors import UserError
from tuner.redact import redact
from tuner.tracking import default_tracking_uri

TRACKING_ENV = "TUNER_TRACKING_URI"
STORAGE_ENV = "TUNER_STORAGE"
STATE_DIR_ENV = "TUNER_STATE_DIR"


def tracking_uri(flag: Optional[str]) -> str:
    """The tracking URI as given (``${VAR}`` references kept); refuses literal passwords, which would
    end up in saved state and logs."""
    uri = flag or os.environ.get(TRACKING_ENV) or default_tracking_uri(Path.cwd())
    if redact(uri) != uri:
        raise UserError(
            f"tracking URI {redact(uri)} holds a literal credential; use MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or a ${VAR} reference"
        )
    return uri


def search_places(search: str, *, tracking: Optional[str], storage: Optional[str]) -> SearchPlaces:
    storage_path = storage or os.environ.get(STORAGE_ENV) or str(Path.cwd() / "runs")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
        state_dir = Path(storage_path) / search / "tuner_state"
    else:
        # Remote storage: the driver's small state (Optuna SQLite, MLflow run ids) lives on the driver's
        # machine; $TUNER_STATE_DIR puts it somewhere durable (a job's working dir is a temporary copy).
        state_dir = Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".tuner") / search
    uri = tracking_uri(tracking)
    artifact_root = Path.cwd() / "mlruns" if uri.startswith("sqlite:") else None
    return SearchPlaces(storage_path, uri, artifact_root, state_dir)
