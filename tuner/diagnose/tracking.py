"""Each diagnostic, run with ``--tracking-uri``, is one MLflow run in the experiment ``diagnostics``.

Params, final metrics, per-step curves (``step`` = the diagnostic's own step) and the files it wrote
(PNG, JSON) are logged in one go once the diagnostic has finished, so a failed diagnostic leaves no
half-written run behind. Without ``--tracking-uri`` nothing is logged: diagnostics are quick local
checks, and logging is asked for, not assumed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tuner.redact import expand_env
from tuner.tracking.tags import KIND_TAG

EXPERIMENT = "diagnostics"
DIAGNOSTIC_TAG = "tuner.diagnostic"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (characters)
BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch


@dataclass
class DiagnosticRecord:
    """What one diagnostic hands to MLflow."""

    diagnostic: str  # batch-size | lr-range | overfit | preview-augment
    run_name: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)  # name -> value per step
    artifacts: list[Path] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def _experiment_id(client, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    # Same place as the searches' artifacts in the embedded mode: ./mlruns/<experiment>.
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Path.cwd() / "mlruns" / EXPERIMENT).resolve().as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def log_diagnostic(tracking_uri: Optional[str], record: DiagnosticRecord) -> Optional[str]:
    """Writes ``record`` as a finished run; returns its run id (None when no URI was given)."""
    if not tracking_uri:
        return None
    from mlflow.entities import Metric, Param, RunTag  # mlflow: only with --tracking-uri
    from mlflow.tracking import MlflowClient  # mlflow: only with --tracking-uri

    # ${VAR} references are filled in here only, as everywhere a client opens the URI.
    client = MlflowClient(expand_env(tracking_uri, what="tracking URI"))
    run = client.create_run(
        _experiment_id(client, tracking_uri),
        run_name=record.run_name,
        tags={KIND_TAG: "diagnostic", DIAGNOSTIC_TAG: record.diagnostic, **record.tags},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in record.params.items()]
    for start in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[start : start + BATCH])
    metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items() if _finite(v)]
    for name, values in record.curves.items():
        metrics.extend(Metric(name, float(v), now, step) for step, v in enumerate(values) if _finite(v))
    for start in range(0, len(metrics), 10 * BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + 10 * BATCH])
    for path in record.artifacts:
        client.log_artifact(run_id, str(path))
    client.log_batch(run_id, tags=[RunTag("tuner.status", "completed")])
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
