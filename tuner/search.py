"""``tuner search``: spec + flags -> places, tracking callback, driver run, and a closing summary."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from tuner.cluster import preflight_search, ray_address_from_env
from tuner.driver import SearchPlaces, ensure_new_search, run_search
from tuner.errors import UserError
from tuner.redact import redact
from tuner.spec import SearchSpec, load_spec
from tuner.resume import save_definition
from tuner.tracking import MlflowTracking
from tuner.workspace import TRACKING_ENV, search_places


def search_params(spec: SearchSpec) -> dict:
    """What the parent run records about HOW the search searched (the trials record the rest)."""
    return {
        "metric": spec.metric,
        "mode": spec.mode,
        "sampler": dataclasses.asdict(spec.sampler),
        "scheduler": dataclasses.asdict(spec.scheduler),
        "budget": dataclasses.asdict(spec.budget),
        "resources": dataclasses.asdict(spec.resources),
        "space": {p.name: p.kind for p in spec.space},
        "data": dataclasses.asdict(spec.data),
    }


def code_version() -> Optional[str]:
    """The git commit of the working directory, when there is one (lineage for MLflow tags)."""
    if shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def search_tags() -> dict[str, str]:
    import mlflow
    import optuna
    import ray
    import torch
    import torchvision

    tags = {
        "tuner.versions": f"torch={torch.__version__} torchvision={torchvision.__version__} "
        f"ray={ray.__version__} optuna={optuna.__version__} mlflow={mlflow.__version__}",
    }
    commit = code_version()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def make_tracking(spec: SearchSpec, places: SearchPlaces, spec_file: Optional[Path]) -> MlflowTracking:
    return MlflowTracking(
        tracking_uri=places.tracking_uri,
        search_name=spec.name,
        state_dir=places.state_dir,
        artifact_root=places.artifact_root,
        search_params=search_params(spec),
        search_tags=search_tags(),
        spec_file=spec_file,
        metric=spec.metric,
        mode=spec.mode,
    )


def run_from_cli(args) -> int:
    from tuner.cli import parse_assignments

    overrides = parse_assignments(args.set)
    spec = load_spec(args.spec, overrides=overrides)
    if args.name:
        spec = dataclasses.replace(spec, name=args.name)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise UserError(f"--num-samples: must be >= 1, got {args.num_samples}")
        spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=args.num_samples))
    # On a cluster the pre-flight check looks for the data on every node instead of here.
    on_cluster = bool(args.address or ray_address_from_env())
    for key, path in (("data.train", spec.data.train), ("data.val", spec.data.val)):
        if not on_cluster and "://" not in path and not Path(path).is_dir():
            raise UserError(f"{spec.source}: {key}: data folder {path} does not exist "
                            "(for the sample: tuner data demo --out data/demo)")
    tracking_flag = args.tracking_uri or os.environ.get(TRACKING_ENV) or spec.tracking
    places = search_places(spec.name, tracking=tracking_flag, storage=args.storage)
    ensure_new_search(places, spec.name)
    preflight_search(spec, places, address=args.address)  # one clear line before any trial
    save_definition(places, spec, spec_text=Path(args.spec).read_text(), start_dir=Path.cwd(),
                    overrides=overrides, address=args.address)
    tracking = make_tracking(spec, places, Path(args.spec))
    results = run_search(spec, places, tracking, address=args.address)
    print_summary(spec, places, results)
    return 0


def print_summary(spec: SearchSpec, places: SearchPlaces, results) -> None:
    errors = sum(1 for r in results if r.error is not None)
    print(f"\nsearch {spec.name}: {len(results)} trials ({errors} failed)")
    try:
        best = results.get_best_result(metric=spec.metric, mode=spec.mode, scope="all")
        value = best.metrics_dataframe[spec.metric].max() if spec.mode == "max" else \
            best.metrics_dataframe[spec.metric].min()
        print(f"best {spec.metric}: {value:.4f} ({_describe(best.config, spec)})")
    except (RuntimeError, KeyError, ValueError):
        print("no trial reported a result")
    print(f"leaderboard: tuner leaderboard {spec.name} --tracking-uri {redact(places.tracking_uri)}")


def _describe(config: dict, spec: SearchSpec) -> str:
    return ", ".join(f"{p.name}={config[p.name]}" for p in spec.space if p.name in config)
