"""``tuner search`` and ``tuner resume`` as library calls: spec + settings -> places, tracking
callback, pre-flight, driver run, and a closing summary. The CLI only parses flags into these."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

from tuner.cluster.connect import ray_address_from_env
from tuner.cluster.preflight import preflight_search
from tuner.errors import UserError
from tuner.places import NAME_RULE, SearchPlaces, is_search_name, resolve_tracking_uri, search_places
from tuner.redact import redact
from tuner.search.definition import load_definition, save_definition, write_definition
from tuner.search.driver import ensure_new_search, resume_search, run_search
from tuner.spec.batch_probe import load_probe, probe_path
from tuner.spec.gpu_share import check_share
from tuner.spec.load import load_spec
from tuner.spec.model import SearchSpec
from tuner.tracking.callback import MlflowTracking
from tuner.tracking.lineage import search_lineage_tags

log = logging.getLogger(__name__)


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


def make_tracking(spec: SearchSpec, places: SearchPlaces, spec_file: Optional[Path],
                  start_dir: Path) -> MlflowTracking:
    return MlflowTracking(
        tracking_uri=places.tracking_uri,
        search_name=spec.name,
        state_dir=places.state_dir,
        artifact_root=places.artifact_root,
        search_params=search_params(spec),
        search_tags=search_lineage_tags(start_dir),
        spec_file=spec_file,
        metric=spec.metric,
        mode=spec.mode,
    )


def start_search(spec_file: Path, *, overrides: dict, name: Optional[str] = None,
                 num_samples: Optional[int] = None, storage: Optional[str] = None,
                 address: Optional[str] = None, tracking_uri: Optional[str] = None,
                 ray_output: bool = False) -> SearchSpec:
    """Runs a new search to its end and prints its summary; returns the spec it ran.
    ``ray_output``: Ray Tune's own progress output too, besides the search's console."""
    if name is not None and not is_search_name(name):
        raise UserError(f"--name {name!r}: must be {NAME_RULE} (it names the search's folders)")
    spec = load_spec(spec_file, overrides=overrides)
    if name:
        spec = dataclasses.replace(spec, name=name)
    if num_samples is not None:
        if num_samples < 1:
            raise UserError(f"--num-samples: must be >= 1, got {num_samples}")
        spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=num_samples))
    # On a cluster the pre-flight check looks for the data on every node instead of here.
    on_cluster = bool(address or ray_address_from_env())
    for key, path in (("data.train", spec.data.train), ("data.val", spec.data.val)):
        if not on_cluster and "://" not in path and not Path(path).is_dir():
            raise UserError(f"{spec.source}: {key}: data folder {path} does not exist "
                            "(for the sample: tuner data demo --out data/demo)")
    uri = resolve_tracking_uri(tracking_uri, spec_value=spec.tracking)
    places = search_places(spec.name, tracking_uri=uri, storage=storage)
    ensure_new_search(places, spec)  # before anything is written or run
    check_gpu_share(spec, Path(spec_file))
    preflight_search(spec, places, address=address)  # one clear line before any trial
    start_dir = Path.cwd()
    save_definition(places, spec, spec_file=Path(spec_file), start_dir=start_dir,
                    overrides=overrides, address=address)
    tracking = make_tracking(spec, places, Path(spec_file), start_dir)
    results = run_search(spec, places, tracking, address=address, ray_output=ray_output)
    print_summary(spec, places, results)
    report_search(spec, places)
    return spec


def check_gpu_share(spec: SearchSpec, spec_file: Path) -> None:
    """A fractional resources.gpu must fit the card by the batch-size probe beside the spec, when
    one was measured on CUDA (``tuner diagnose batch-size SPEC``); without one Ray packs blindly."""
    path = probe_path(spec_file)
    if 0 < spec.resources.gpu < 1 and path.is_file():
        advice = check_share(load_probe(path), spec, path.name)
        if advice is not None:
            log.info("GPU share checked against %s: %s", path.name, advice.describe())


def resume(name: str, *, more: Optional[int] = None, storage: Optional[str] = None,
           address: Optional[str] = None, ray_output: bool = False, trust_storage: bool = False) -> None:
    """Finishes a search whose driver died, or runs ``more`` further trials on the same study and
    MLflow parent run (a new Ray experiment inside the search's folder). ``trust_storage``: let Ray
    unpickle the search's state without checking the driver's seal on it."""
    definition, places, spec = load_definition(name, storage)
    address = address or definition.get("address")
    preflight_search(spec, places, address=address)
    if more is None:
        results = resume_search(spec, places, address=address, ray_output=ray_output,
                                trust_storage=trust_storage)
        print_summary(spec, places, results)
        report_search(spec, places)
        return
    if more < 1:
        raise UserError(f"--more: must be >= 1, got {more}")
    extension = f"more-{len(definition['extensions']) + 1}"
    definition["extensions"].append({"name": extension, "num_samples": more})
    write_definition(places, definition)
    extended = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, num_samples=more))
    tracking = make_tracking(extended, places, spec_file=None, start_dir=Path(definition["start_dir"]))
    results = run_search(extended, places, tracking, address=address, ray_output=ray_output,
                         experiment=(places.search_dir(spec.name), extension))
    print_summary(extended, places, results)
    report_search(spec, places)


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


def report_search(spec: SearchSpec, places: SearchPlaces) -> Optional[Path]:
    """Writes the search's report (``tuner report``) and prints its path. A finished search never
    fails for its report: a report that cannot be written is one line saying how to retry."""
    from tuner.report import write_report  # matplotlib: only once a search has run

    try:
        path = write_report(spec.name, places, spec=spec)
    except Exception as err:  # MLflow gone away, a figure that will not draw: the trials are safe
        log.warning("search %s: report not written (%s)", spec.name, redact(str(err)),
                    exc_info=log.isEnabledFor(logging.DEBUG))  # the traceback with --verbose
        print(f"report: not written; retry with `tuner report {spec.name}`")
        return None
    print(f"report: {path}")
    return path


def _describe(config: dict, spec: SearchSpec) -> str:
    return ", ".join(f"{p.name}={config[p.name]}" for p in spec.space if p.name in config)
