"""Where a search's results live, and the one resolution of the tracking URI.

Embedded default, all under the working directory: MLflow in ``mlflow.db`` (SQLite) with artifacts in
``mlruns/``, Ray results and checkpoints in ``runs/``, the Optuna study and the MLflow run ids in
``runs/<search>/tuner_state/``. Team mode overrides each with a flag, a variable or the spec.

Light on purpose (no Ray, MLflow or torch): ``tuner leaderboard`` and ``tuner ui`` import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tuner.errors import UserError
from tuner.redact import literal_credential, redact

TRACKING_ENV = "TUNER_TRACKING_URI"
STORAGE_ENV = "TUNER_STORAGE"
STATE_DIR_ENV = "TUNER_STATE_DIR"


@dataclass(frozen=True)
class SearchPlaces:
    """Where a search keeps its results: Ray storage, MLflow, the Optuna study."""

    storage_path: str  # Ray's storage (local folder, or s3://… on a cluster)
    tracking_uri: str
    artifact_root: Optional[Path]
    state_dir: Path  # small local state: MLflow run ids, the Optuna SQLite, the search definition

    def search_dir(self, name: str) -> str:
        return os.path.join(self.storage_path, name)


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def resolve_tracking_uri(flag: Optional[str], *, spec_value: Optional[str] = None) -> str:
    """The tracking URI every command uses: ``--tracking-uri``, else ``$TUNER_TRACKING_URI``, else the
    spec's ``tracking:``, else SQLite in the working directory.

    Returned as given (``${VAR}`` references kept, expanded only where a client opens it); a literal
    password is refused, since the URI ends up in saved state and logs.
    """
    uri = flag or os.environ.get(TRACKING_ENV) or spec_value or default_tracking_uri(Path.cwd())
    reason = literal_credential(uri)
    if reason:
        raise UserError(
            f"tracking URI {redact(uri)} holds a literal credential ({reason}); use "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or a ${VAR} reference"
        )
    return uri


NAME_RULE = "a non-empty name of letters, digits, - and _"


def is_search_name(name: object) -> bool:
    """A search's name names folders (storage, state) and the MLflow experiment: nothing that could
    climb out of the storage (``../x``, ``/abs``) or need quoting."""
    return isinstance(name, str) and bool(name.strip()) and name.replace("-", "").replace("_", "").isalnum() \
        and name.isascii()


def search_places(search: str, *, tracking_uri: str, storage: Optional[str]) -> SearchPlaces:
    """Places of the search ``search``; ``tracking_uri`` comes from ``resolve_tracking_uri``."""
    if not is_search_name(search):
        raise UserError(f"search name {search!r}: must be {NAME_RULE}")
    storage_path = storage or os.environ.get(STORAGE_ENV) or str(Path.cwd() / "runs")
    reason = literal_credential(storage_path)
    if reason:
        raise UserError(f"storage {redact(storage_path)} holds a literal credential ({reason}); S3 takes "
                        "AWS_* variables, ~/.aws or the instance profile")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
        state_dir = Path(storage_path) / search / "tuner_state"
    else:
        # Remote storage: the driver's small state (Optuna SQLite, MLflow run ids) lives on the driver's
        # machine; $TUNER_STATE_DIR puts it somewhere durable (a job's working dir is a temporary copy).
        state_dir = Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".tuner") / search
    artifact_root = Path.cwd() / "mlruns" if tracking_uri.startswith("sqlite:") else None
    return SearchPlaces(storage_path, tracking_uri, artifact_root, state_dir)
