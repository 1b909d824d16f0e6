"""Opening MLflow, and MLflow's failures as one-line errors: shared by every reader and the writer.

Light on purpose (MLflow, no Ray or torch): ``tuner leaderboard``/``ui``/``promote`` start here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tuner.errors import UserError
from tuner.redact import expand_env, redact

# MLflow error codes that mean "try again later"; anything else is refused for good.
TRANSIENT_CODES = {
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE",
    "WORKSPACE_TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED", "COULD_NOT_ACQUIRE_LOCK", "UNPARSEABLE_HTTP_ERROR",
}
def fail_fast_http(*, retries: int = 0, timeout_s: int = 10) -> None:
    """Makes MLflow's HTTP client give up quickly instead of retrying for minutes (its default:
    7 retries with exponential backoff, 120 s timeout). Values the user set are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def is_transient(err: BaseException) -> bool:
    """True when a failed MLflow call may succeed later (server down, timeout, overload)."""
    if isinstance(err, MlflowException):
        return err.error_code in TRANSIENT_CODES
    transient = (OSError, requests.exceptions.RequestException, sqlalchemy.exc.OperationalError)
    return isinstance(err, transient)


def short_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def open_client(tracking_uri: str) -> MlflowClient:
    """A client for reading; a missing SQLite file is an error here (MLflow would create it).
    ``${VAR}`` references in the URI are filled in from the environment."""
    tracking_uri = expand_env(tracking_uri, what="tracking URI")
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise UserError(f"no MLflow store at {path} (run `tuner search` in this folder first, "
                            "or pass --tracking-uri)")
    if tracking_uri.startswith(("http://", "https://")):
        fail_fast_http(retries=1, timeout_s=30)
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


@contextmanager
def tracking_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow failures (server down, refused value) as one-line UserErrors."""
    try:
        yield
    except MlflowException as err:
        where, why = redact(tracking_uri), redact(short_error(err))
        if is_transient(err):
            raise UserError(f"tracking store {where} is unreachable: {why}") from None
        raise UserError(f"tracking store {where}: {why}") from None
